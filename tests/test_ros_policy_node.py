"""policy_node over real rclpy: lifecycle, the control loop against sim_bridge, the watchdog, hot
swapping, diagnostics, and the message -> observation conversion.

The node loads policies through ``serl_ctrl.runtime.load_policy``; these tests inject a tiny
stand-in policy through the node's ``loader`` argument instead (the node runs in-process)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from ros_helpers import NodeProcess, RosHarness, needs_rclpy, ros_domain, wait_for  # noqa: F401

from serl_ctrl.envs.panda import JOINT_NAMES

pytestmark = [needs_rclpy, pytest.mark.timeout(120)]

STATE_OBS = {"tcp_pose": ((7,), "float32"), "gripper": ((1,), "float32"), "cube_pos": ((3,), "float32")}


@dataclass
class StubSpec:
    obs: dict
    action_dim: int = 4
    control_hz: float = 20.0
    obs_mode: str = "state"
    task: str = "pickcube"


@dataclass
class StubPolicy:
    """Always the same action; records what it saw."""

    action: tuple
    spec: StubSpec = field(default_factory=lambda: StubSpec(dict(STATE_OBS)))
    resets: int = 0
    seen: list = field(default_factory=list)

    def reset(self) -> None:
        self.resets += 1

    def act(self, obs):
        self.seen.append(obs)
        return np.asarray(self.action, dtype=np.float32)


POLICIES = {
    "plus_x": lambda: StubPolicy((0.3, 0.0, 0.0, -1.0)),
    "minus_x": lambda: StubPolicy((-0.3, 0.0, 0.0, -1.0)),
    "mystery": lambda: StubPolicy((0, 0, 0, 0),
                                  StubSpec({"tcp_pose": ((7,), "float32"), "mystery": ((2,), "float32")})),
    "six_d": lambda: StubPolicy((0,) * 6, StubSpec(dict(STATE_OBS), action_dim=6)),
}


def loader(name: str):
    if name not in POLICIES:
        raise FileNotFoundError(f"no policy {name!r}")
    return POLICIES[name]()


def _params(**kw):
    from rclpy.parameter import Parameter

    return [Parameter(k, value=v) for k, v in kw.items()]


def _change_state(h: RosHarness, transition: str) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    req = ChangeState.Request()
    req.transition.id = getattr(Transition, f"TRANSITION_{transition.upper()}")
    return h.call(ChangeState, "policy_node/change_state", req).success


def _sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


# --- against the simulated arm -----------------------------------------------------------------------


def test_policy_node_drives_sim_bridge_swaps_policies_and_stops(ros_domain):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rosgraph_msgs.msg import Clock

    from serl_ctrl.ros.common import diagnostic_values
    from serl_ctrl.ros.policy_node import PolicyNode

    bridge = NodeProcess("sim_bridge", ros_domain, {"task": "pickcube", "rate_hz": 100.0})
    h = RosHarness(ros_domain)
    try:
        tcp = h.subscribe(PoseStamped, "tcp_pose")
        clock = h.subscribe(Clock, "/clock")
        targets = h.subscribe(PoseStamped, "cartesian_controller/target_pose")
        diag = h.subscribe(DiagnosticArray, "/diagnostics")
        node = PolicyNode(loader=loader, context=h.context,
                          parameter_overrides=_params(use_sim_time=True, policy="plus_x", rate_hz=20.0))
        h.add_node(node)
        wait_for(lambda: tcp.count > 5 and clock.count > 5, 30, f"sim_bridge state ({bridge.log()[-1500:]})")

        assert _change_state(h, "configure")
        assert node.policy_version == 1 and node.builder.objects == ["cube"]
        assert targets.count == 0
        assert _change_state(h, "activate")
        x0 = tcp.last.pose.position.x
        wait_for(lambda: tcp.last.pose.position.x > x0 + 0.05, 15, "the policy to move the TCP in +x")
        assert node.policy.resets == 1
        obs = node.policy.seen[-1]
        assert set(obs) == set(STATE_OBS) and obs["tcp_pose"].dtype == np.float32
        # Commands carry the stamp of the observation they answer (simulated time, not newer).
        last = targets.last
        assert 0 < _sec(last.header.stamp) <= _sec(clock.last.clock) + 1e-9
        assert last.header.frame_id == "panda_link0"

        # Hot swap through the parameter service: loaded in the background, swapped between ticks.
        req = SetParameters.Request()
        req.parameters = [ParameterMsg(name="policy", value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                                           string_value="minus_x"))]
        assert h.call(SetParameters, "policy_node/set_parameters", req).results[0].successful
        wait_for(lambda: node.policy_version == 2, 10, "the swap")
        x1 = tcp.last.pose.position.x
        wait_for(lambda: tcp.last.pose.position.x < x1 - 0.03, 15, "the new policy to move the TCP in -x")
        # A bad one is refused and the running policy stays.
        req.parameters[0].value.string_value = "six_d"
        assert h.call(SetParameters, "policy_node/set_parameters", req).results[0].successful  # accepted, loads
        time.sleep(0.5)
        assert node.policy_version == 2 and node.policy_name == "minus_x"
        # The topic way: a name or path on ~/load_policy.
        from std_msgs.msg import String

        load = h.publisher(String, "policy_node/load_policy")
        wait_for(lambda: load.get_subscription_count() > 0, 5, "the ~/load_policy subscription")
        load.publish(String(data="plus_x"))
        wait_for(lambda: node.policy_version == 3 and node.policy_name == "plus_x", 10, "the swap from the topic")
        stats = node.stats()
        # Missed ticks and tick latency depend on the machine's load: the benchmark
        # (bench/bench_ros.py) holds those goals; here they must only be counted and reported.
        assert isinstance(stats["missed_ticks"], int) and stats["missed_ticks"] >= 0, stats
        assert stats["commands"] > 20 and stats["tick_p99_ms"] > 0, stats

        wait_for(lambda: any(diagnostic_values(m).get("policy_version") == "2" for m in diag.msgs
                             if m.status[0].name.startswith("policy_node")), 10, "policy_node diagnostics")
        values = [diagnostic_values(m) for m in diag.msgs if m.status[0].name.startswith("policy_node")][-1]
        assert {"tick_latency_p99_ms", "obs_to_command_p99_ms", "missed_ticks", "policy"} <= set(values)

        # Deactivate: no more commands; the bridge holds once its command stream is silent.
        assert _change_state(h, "deactivate")
        n = targets.count
        time.sleep(0.5)
        assert targets.count <= n + 1
        bridge.wait_log("no command for", timeout=10)
        assert _change_state(h, "cleanup")
        assert node.policy is None
    finally:
        h.close()
        bridge.stop()


# --- the watchdog, with states published by the test --------------------------------------------------


class FakeArm:
    """Publishes tcp_pose, joint_states and the cube pose at 50 Hz, stamped on the wall clock."""

    def __init__(self, h: RosHarness) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        self.h = h
        self.pub_tcp = h.publisher(PoseStamped, "tcp_pose")
        self.pub_js = h.publisher(JointState, "joint_states")
        self.pub_cube = h.publisher(PoseStamped, "objects/cube/pose")
        self.cube = True
        self.stamp_offset = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        from serl_ctrl.ros import convert

        while not self._stop:
            t = self.h.node.get_clock().now().nanoseconds * 1e-9 - self.stamp_offset
            tcp = PoseStamped()
            convert.fill_header(tcp.header, t, "panda_link0")
            convert.set_pose(tcp.pose, [0.5, 0.0, 0.25], [0.0, 1.0, 0.0, 0.0])
            self.pub_tcp.publish(tcp)
            js = JointState()
            convert.fill_header(js.header, t)
            js.name = list(JOINT_NAMES)
            js.position = [0.0] * 7 + [0.02, 0.02]
            self.pub_js.publish(js)
            if self.cube:
                cube = PoseStamped()
                convert.fill_header(cube.header, t)
                convert.set_pose(cube.pose, [0.55, 0.05, 0.02], [1.0, 0.0, 0.0, 0.0])
                self.pub_cube.publish(cube)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)


def test_input_triggered_ticks_follow_the_arm_updates(ros_domain):
    """trigger:=inputs: no timer; one command per 1/rate_hz of the arm's stamps, each answering a
    complete update (tcp_pose and the cube pose of the same simulator step); when the arm goes
    silent the commands stop."""
    from geometry_msgs.msg import PoseStamped

    from serl_ctrl.ros.policy_node import PolicyNode

    bridge = NodeProcess("sim_bridge", ros_domain, {"task": "pickcube", "rate_hz": 100.0})
    h = RosHarness(ros_domain)
    try:
        tcp = h.subscribe(PoseStamped, "tcp_pose")
        targets = h.subscribe(PoseStamped, "cartesian_controller/target_pose")
        node = PolicyNode(loader=loader, context=h.context, parameter_overrides=_params(
            use_sim_time=True, policy="plus_x", rate_hz=20.0, trigger="inputs", autostart=True))
        h.add_node(node)
        wait_for(lambda: targets.count > 40, 40, f"commands ({bridge.log()[-1500:]})")
        assert node._timer is None and node.errors == 0
        stamps = [round(_sec(m.header.stamp), 6) for m in list(targets.msgs)[5:40]]
        gaps = np.diff(stamps)
        # 100 Hz arm, 20 Hz policy: every 5th step; a step the node did not see completely in time
        # makes a longer gap, never a shorter one
        assert np.all(gaps >= 0.05 - 1e-6), gaps
        assert np.median(gaps) == pytest.approx(0.05, abs=1e-6), gaps
        assert all(abs(t * 100 - round(t * 100)) < 1e-3 for t in stamps)  # stamps of simulator steps
        x0 = tcp.last.pose.position.x
        wait_for(lambda: tcp.last.pose.position.x > x0 + 0.03, 15, "the policy to move the TCP in +x")
        bridge.stop()
        time.sleep(0.3)
        n = targets.count
        time.sleep(1.0)
        assert targets.count == n  # no inputs, no ticks: nothing is sent
    finally:
        bridge.stop()
        h.close()


def test_watchdog_sends_nothing_on_stale_observations(ros_domain):
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64MultiArray

    from serl_ctrl.ros.policy_node import PolicyNode

    h = RosHarness(ros_domain)
    arm = None
    try:
        targets = h.subscribe(PoseStamped, "cartesian_controller/target_pose")
        gripper = h.subscribe(Float64MultiArray, "gripper_controller/commands")
        node = PolicyNode(loader=loader, context=h.context,
                          parameter_overrides=_params(policy="plus_x", rate_hz=50.0, command_timeout_s=0.2,
                                                      autostart=True))
        h.add_node(node)
        wait_for(lambda: node._timer is not None, 10, "autostart to activate the node")
        # Nothing published yet: the node holds and says why.
        wait_for(lambda: node.held_ticks > 3, 5, "held ticks without inputs")
        assert "no message yet" in node.last_hold_reason and targets.count == 0

        arm = FakeArm(h)
        wait_for(lambda: targets.count > 10, 10, "commands once the inputs flow")
        t = targets.last
        np.testing.assert_allclose([t.pose.position.x, t.pose.position.y, t.pose.position.z],
                                   [0.5 + 0.3 * 0.03, 0.0, 0.25], atol=1e-9)
        assert gripper.last.data[0] == pytest.approx(0.08)
        obs = node.policy.seen[-1]
        np.testing.assert_allclose(obs["gripper"], [0.5])
        np.testing.assert_allclose(obs["cube_pos"], [0.55, 0.05, 0.02], atol=1e-6)

        # The cube's pose stops: within the timeout the node stops commanding.
        arm.cube = False
        wait_for(lambda: "objects/cube/pose: 0." in node.last_hold_reason, 5, "a hold naming the silent topic")
        time.sleep(0.1)
        n = targets.count
        time.sleep(0.4)
        assert targets.count == n, "commands sent with a stale observation"
        arm.cube = True
        wait_for(lambda: targets.count > n + 5, 5, "commands again once the cube pose is fresh")

        # Inputs stamped on another clock (sim time read with use_sim_time false): a clear hint.
        arm.stamp_offset = 1.0e6
        wait_for(lambda: "use_sim_time" in node.last_hold_reason, 5, "the clock-mismatch hint")
    finally:
        if arm is not None:
            arm.stop()
        h.close()


def test_configure_fails_with_the_reason(ros_domain, capfd):
    from serl_ctrl.ros.policy_node import PolicyNode

    h = RosHarness(ros_domain)
    try:
        node = PolicyNode(loader=loader, context=h.context, parameter_overrides=_params(policy="mystery"))
        h.add_node(node)
        for name, expected in (("mystery", "'mystery' ((2,), float32) has no source topic"),
                               ("six_d", "action_dim 6"), ("nowhere", "no policy 'nowhere'"),
                               ("", "set the 'policy' parameter")):
            node.set_parameters(_params(policy=name))
            assert not _change_state(h, "configure"), name
            assert node.policy is None
            wait_for(lambda: expected in capfd.readouterr().err, 5, f"the reason {expected!r} in the log")
        node.set_parameters(_params(policy="plus_x"))
        assert _change_state(h, "configure")
        assert _change_state(h, "cleanup")
    finally:
        h.close()


def test_sampler_seed_reaches_the_real_loader(ros_domain, capfd):
    """``sampler_seed`` goes to ``load_policy``: the shipped consistency file (default export, zero
    noise in the graph) is refused with the reason while a seed is set, and loads without one."""
    from serl_ctrl.ros.policy_node import PolicyNode

    h = RosHarness(ros_domain)
    try:
        node = PolicyNode(context=h.context, parameter_overrides=_params(
            policy="pickcube_consistency_state", sampler_seed=3))
        h.add_node(node)
        assert not _change_state(h, "configure")
        wait_for(lambda: "sampler_seed applies to" in capfd.readouterr().err, 5, "the reason in the log")
        node.set_parameters(_params(sampler_seed=-1))
        assert _change_state(h, "configure")
        assert node.policy is not None and node.policy.spec.task == "pickcube"
        assert _change_state(h, "cleanup")
    finally:
        h.close()


def test_adaptive_tau_reaches_the_real_loader(ros_domain):
    """``adaptive_tau`` >= -1 turns on the runtime's adaptive chunking at the next load; the default
    (-2) leaves chunks open loop."""
    from serl_ctrl.ros.policy_node import PolicyNode

    h = RosHarness(ros_domain)
    try:
        node = PolicyNode(context=h.context, parameter_overrides=_params(
            policy="pickcube_consistency_state", adaptive_tau=0.9))
        h.add_node(node)
        assert _change_state(h, "configure")
        assert node.policy.adaptive_tau == pytest.approx(0.9) and node.policy.spec.n_action_steps > 1
        assert _change_state(h, "cleanup")
        node.set_parameters(_params(adaptive_tau=-2.0))
        assert _change_state(h, "configure")
        assert node.policy.adaptive_tau is None
        assert _change_state(h, "cleanup")
    finally:
        h.close()


def test_policy_node_process_reports_a_missing_policy(ros_domain):
    """The executable with the real loader (serl_ctrl.runtime.load_policy): a clear error."""
    proc = NodeProcess("policy_node", ros_domain, {"policy": "no_such_policy_xyz", "autostart": True})
    try:
        log = proc.wait_log("configure failed", timeout=30)
        assert "no_such_policy_xyz" in log
    finally:
        proc.stop()
    proc = NodeProcess("policy_node", ros_domain, {"rate_hz": 500.0})
    assert proc.proc.wait(timeout=30) == 2
    assert "rate_hz" in proc.log() and "[10.0, 50.0]" in proc.log()
    proc.stop()


# --- messages -> observations (no ROS graph needed) ---------------------------------------------------


def test_observation_builder_maps_messages_to_env_keys():
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from sensor_msgs.msg import Image, JointState

    from serl_ctrl.ros import convert

    spec = {"tcp_pose": ((7,), "float32"), "tcp_vel": ((6,), "float32"), "gripper": ((1,), "float32"),
            "cube_pos": ((3,), "float32"), "cube_quat": ((4,), "float32"), "front": ((4, 5, 3), "uint8"),
            "joint_pos": ((9,), "float32")}
    b = convert.ObservationBuilder(spec)
    assert b.objects == ["cube"] and b.cameras == ["front"]
    assert set(b.stamps()) == {"tcp_pose", "tcp_twist", "joint_states", "objects/cube/pose", "front/image_raw"}
    assert not b.ready()
    with pytest.raises(ValueError, match="no message yet"):
        b.build()

    tcp = PoseStamped()
    convert.fill_header(tcp.header, 1.5)
    q = np.array([-0.1, -1.0, 0.0, 0.0]) / np.linalg.norm([0.1, 1.0])  # w < 0: the env flips it to w >= 0
    convert.set_pose(tcp.pose, [0.5, 0.1, 0.2], q)
    b.update_tcp_pose(tcp, recv=10.0)
    tw = TwistStamped()
    convert.fill_header(tw.header, 1.4)
    convert.set_twist(tw.twist, [0.1, 0.2, 0.3], [0.0, 0.0, 1.0])
    b.update_tcp_twist(tw)
    js = JointState()
    convert.fill_header(js.header, 1.3)
    js.name = list(reversed(JOINT_NAMES))  # order does not matter, names do
    js.position = list(reversed([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.01, 0.02]))
    b.update_joint_states(js)
    cube = PoseStamped()
    convert.fill_header(cube.header, 1.2)
    convert.set_pose(cube.pose, [0.6, 0.0, 0.02], [1.0, 0.0, 0.0, 0.0])
    b.update_object("cube", cube)
    img = Image()
    convert.fill_header(img.header, 1.1)
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    convert.array_to_image(img, rgb)
    b.update_image("front", img)
    assert b.ready() and b.newest() == (pytest.approx(1.5), 10.0) and b.oldest_stamp() == pytest.approx(1.1)

    obs = b.build()
    np.testing.assert_allclose(obs["tcp_pose"], [0.5, 0.1, 0.2, *(-q)], rtol=1e-6)
    np.testing.assert_allclose(obs["tcp_vel"], [0.1, 0.2, 0.3, 0, 0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(obs["gripper"], [0.03 / 0.08], rtol=1e-6)
    np.testing.assert_allclose(obs["joint_pos"], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.01, 0.02], rtol=1e-6)
    np.testing.assert_allclose(obs["cube_quat"], [1, 0, 0, 0])
    np.testing.assert_array_equal(obs["front"], rgb)
    assert all(v.dtype == (np.uint8 if k == "front" else np.float32) for k, v in obs.items())

    # bgr8 is turned into RGB; a wrong size is an error naming the camera.
    img.encoding = "bgr8"
    b.update_image("front", img)
    np.testing.assert_array_equal(b.build()["front"], rgb[:, :, ::-1])
    convert.array_to_image(img, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="camera 'front' sends"):
        b.update_image("front", img)
    js.name = list(JOINT_NAMES[:7])
    js.position = [0.0] * 7
    with pytest.raises(ValueError, match="lacks joints"):
        b.update_joint_states(js)


def test_observation_builder_rejects_what_no_topic_provides():
    from serl_ctrl.ros import convert

    with pytest.raises(ValueError, match="'mystery'.*no source topic"):
        convert.ObservationBuilder({"tcp_pose": ((7,), "float32"), "mystery": ((2,), "float32")})
    with pytest.raises(ValueError, match="'tcp_pose' has shape"):
        convert.ObservationBuilder({"tcp_pose": ((3,), "float32")})
    with pytest.raises(ValueError, match="images"):
        convert.ObservationBuilder({"front": ((64, 64), "uint8")})
    # The lead's PolicySpec objects (ObsField with .shape/.dtype) work as well as tuples.
    from serl_ctrl.runtime.spec import ObsField

    b = convert.ObservationBuilder({"tcp_pose": ObsField((7,)), "wrist": ObsField((8, 8, 3), "uint8")})
    assert b.cameras == ["wrist"]


def test_camera_info_is_a_pinhole_of_the_render_fov():
    from sensor_msgs.msg import CameraInfo

    from serl_ctrl.ros import convert

    info = CameraInfo()
    convert.camera_info(info, 128, 128, 90.0)
    assert info.k[0] == pytest.approx(64.0) and info.k[4] == pytest.approx(64.0)
    assert info.k[2] == pytest.approx(63.5) and list(info.d) == [0.0] * 5


def test_policy_node_runs_an_exported_onnx_policy(ros_domain, tmp_path):
    """End to end with the real loader: a (small, untrained) SAC actor exported to ONNX by
    serl_ctrl.export, loaded by serl_ctrl.runtime.load_policy inside the policy_node executable,
    driving the sim_bridge executable on simulated time."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped

    from serl_ctrl.agents.sac import SACAgent
    from serl_ctrl.export.onnx_export import export_onnx
    from serl_ctrl.ros import transport
    from serl_ctrl.ros.common import diagnostic_values
    from serl_ctrl.runtime.spec import PolicySpec

    obs_space, act_space = transport.env_spaces("pickcube", "state")
    agent = SACAgent(obs_space, act_space, {"hidden_dims": [32, 32], "n_critics": 2})
    spec = PolicySpec.from_spaces(obs_space, act_space, control_hz=20.0, task="pickcube", obs_mode="state", algo="sac")
    path = tmp_path / "pickcube_test.onnx"
    export_onnx(agent.policy_state(), spec, path, n_random=2)

    bridge = NodeProcess("sim_bridge", ros_domain, {"task": "pickcube"})
    node = NodeProcess("policy_node", ros_domain, {"policy": str(path), "rate_hz": 20.0, "autostart": True,
                                                   "use_sim_time": True})
    h = RosHarness(ros_domain)
    try:
        targets = h.subscribe(PoseStamped, "cartesian_controller/target_pose")
        diag = h.subscribe(DiagnosticArray, "/diagnostics")
        wait_for(lambda: targets.count >= 20, 40, f"20 commands (policy_node log: {node.log()[-1500:]})")

        def policy_diag():
            found = [diagnostic_values(m) for m in diag.msgs if m.status[0].name.startswith("policy_node")]
            return found[-1] if found else None

        values = wait_for(policy_diag, 10, "policy_node diagnostics")
        assert values["policy"] == str(path) and values["errors"] == "0" and values["rejected"] == "0"
        assert "configured: policy" in node.log()
    finally:
        h.close()
        node.stop()
        bridge.stop()


def test_shipped_pickcube_policy_picks_the_cube_through_ros(ros_domain):
    """sim_bridge and policy_node as processes, connected by topics alone: the shipped diffusion
    policy (an action-chunk policy, run by the same runtime as in simulation) lifts the cube."""
    from std_msgs.msg import Float64MultiArray

    from serl_ctrl.ros.sim_bridge import REWARD_LAYOUT

    bridge = NodeProcess("sim_bridge", ros_domain, {"task": "pickcube"})
    h = RosHarness(ros_domain)
    node = None
    try:
        reward = h.subscribe(Float64MultiArray, "task/reward")
        success = REWARD_LAYOUT.index("success")
        # Start the policy only once we hear the bridge: on a loaded machine discovery can take
        # longer than the whole pick, and we must see the cube on the table first.
        wait_for(lambda: reward.count > 0, 30, f"task/reward from sim_bridge (log: {bridge.log()[-800:]})")
        node = NodeProcess("policy_node", ros_domain, {"policy": "pickcube_diffusion_state", "rate_hz": 10.0,
                                                       "autostart": True, "use_sim_time": True})

        def lifted():
            return any(m.data[success] > 0.5 for m in reward.msgs)

        wait_for(lifted, 60, f"the cube to be lifted (policy_node log: {node.log()[-1500:]}; "
                             f"sim_bridge log: {bridge.log()[-800:]})")
        first = next(i for i, m in enumerate(reward.msgs) if m.data[success] > 0.5)
        assert first > 5 and reward.msgs[0].data[success] == 0.0  # it started on the table
        assert "configured: policy" in node.log()
    finally:
        h.close()
        if node is not None:
            node.stop()
        bridge.stop()
