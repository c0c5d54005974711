"""The language nodes over real rclpy, each test in its own ROS domain: speech_node (espeak-ng WAV
files -> transcript and correction), planner_node (observations -> instruction; a correction
switches it at once; unrecognised words change nothing; the corrections log), and policy_node's
instruction input for language-conditioned policies (the embedding reaches the policy; "stop" holds
the arm)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from ros_helpers import NodeProcess, RosHarness, needs_rclpy, ros_domain, wait_for  # noqa: F401

from serl_ctrl.language import embedding as E
from serl_ctrl.language import speech

pytestmark = [needs_rclpy, pytest.mark.timeout(180)]
needs_minilm = pytest.mark.skipif(not E.minilm_available(), reason="MiniLM weights or tokenizers missing")


class ArmPublisher:
    """Publishes tcp_pose and the cube pose at 20 Hz, stamped with the harness clock (wall time)."""

    def __init__(self, h: RosHarness, tcp=(0.5, 0.0, 0.25), cube=(0.5, 0.0, 0.02)) -> None:
        from geometry_msgs.msg import PoseStamped

        self.h, self.tcp, self.cube = h, list(tcp), list(cube)
        self.pub_tcp = h.publisher(PoseStamped, "tcp_pose")
        self.pub_cube = h.publisher(PoseStamped, "objects/cube/pose")
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from geometry_msgs.msg import PoseStamped

        from serl_ctrl.ros import convert

        while not self._stop:
            t = self.h.node.get_clock().now().nanoseconds * 1e-9
            for pub, pos, quat in ((self.pub_tcp, self.tcp, [0.0, 1.0, 0.0, 0.0]),
                                   (self.pub_cube, self.cube, [1.0, 0.0, 0.0, 0.0])):
                msg = PoseStamped()
                convert.fill_header(msg.header, t, "panda_link0")
                convert.set_pose(msg.pose, pos, quat)
                pub.publish(msg)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)


# --- speech_node -----------------------------------------------------------------------------------


@pytest.mark.skipif(not speech.pocketsphinx_available() or speech.espeak_binary() is None,
                    reason="needs pocketsphinx and espeak-ng")
def test_speech_node_publishes_corrections_from_wav_files(ros_domain, tmp_path):
    from std_msgs.msg import String

    from serl_ctrl.ros.common import COMMAND_QOS

    wavs = [speech.synthesize(text, tmp_path / f"{i}.wav")
            for i, text in enumerate(["move a bit to the left", "hello there how are you doing", "stop"])]
    h = RosHarness(ros_domain)
    node = None
    try:
        corrections = h.subscribe(String, "correction", COMMAND_QOS)
        transcripts = h.subscribe(String, "transcript", COMMAND_QOS)
        # the first file waits wav_period_s: time for discovery (volatile topics: nothing is replayed)
        node = NodeProcess("speech_node", ros_domain, {"wav_files": ",".join(map(str, wavs)), "wav_period_s": 3.0})
        wait_for(lambda: h.node.count_publishers("correction") > 0, 20, "the speech node's publishers")
        try:
            wait_for(lambda: transcripts.count >= 3, 60, "three transcripts")
        except BaseException:
            print(node.log())
            raise
        wait_for(lambda: corrections.count >= 2, 5, "two corrections")
        time.sleep(0.3)
        assert [m.data for m in corrections.msgs] == ["move a bit to the left", "stop"]
        log = node.wait_log("all 3 WAV file(s) recognised", 10)
        assert "not understood, nothing changes" in log and "STOP heard" in log
    finally:
        if node is not None:
            node.stop()
        h.close()


def test_speech_node_refuses_missing_wav_files(ros_domain, tmp_path):
    proc = NodeProcess("speech_node", ros_domain, {"wav_files": str(tmp_path / "nope.wav")})
    assert proc.proc.wait(timeout=30) == 2
    assert "wav_files" in proc.log() and "nope.wav" in proc.log()
    proc.stop()


# --- planner_node ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_planner(tmp_path_factory):
    """A planner on tcp_pose + cube_pos (two topics), trained on 3 recorded PickCube demos."""
    if not E.minilm_available():
        pytest.skip("MiniLM weights or tokenizers missing")
    import torch

    from serl_ctrl.data.demos import record_demonstrations
    from serl_ctrl.data.episodes import load_episodes
    from serl_ctrl.language.planner import train_planner

    root = tmp_path_factory.mktemp("ros_planner")
    record_demonstrations("pickcube", root / "demos", 3, seed=0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        planner, _ = train_planner(load_episodes(root / "demos"), {"obs_keys": ["tcp_pose", "cube_pos"],
                                                                  "hidden": [32, 32], "train_steps": 100})
    finally:
        torch.set_num_threads(n)
    planner.save(root / "planner" / "planner")
    return root / "planner"


def test_planner_node_switches_instruction_on_a_correction(ros_domain, tiny_planner, tmp_path):
    from std_msgs.msg import String

    from serl_ctrl.language.corrections import CorrectionLog
    from serl_ctrl.ros.common import COMMAND_QOS, LATCHED_QOS

    log = tmp_path / "corrections.npz"
    h = RosHarness(ros_domain)
    arm = node = None
    try:
        instructions = h.subscribe(String, "instruction", LATCHED_QOS)
        say = h.publisher(String, "correction", COMMAND_QOS)
        node = NodeProcess("planner_node", ros_domain, {"planner": str(tiny_planner), "rate_hz": 20.0,
                                                        "hold_steps": 1000, "corrections_log": str(log)})
        wait_for(lambda: say.get_subscription_count() > 0, 30, f"planner_node up ({node.log()[-1500:]})")
        time.sleep(0.5)
        assert instructions.count == 0  # no observations yet: no decision
        arm = ArmPublisher(h)
        wait_for(lambda: instructions.count > 5, 15, "planner instructions")
        planned = instructions.last.data
        assert planned in {"move above the cube", "go down", "close the gripper", "lift", "a little lower"}

        say.publish(String(data="um, move a little bit to the left please"))
        wait_for(lambda: instructions.last.data == "move a bit to the left", 5, "the correction to take over")
        n = instructions.count
        wait_for(lambda: instructions.count > n + 5, 5, "more ticks")
        assert {m.data for m in instructions.msgs[n:]} == {"move a bit to the left"}  # held

        say.publish(String(data="sing me a song"))
        node.wait_log("not understood, nothing changes", 5)
        n = instructions.count
        wait_for(lambda: instructions.count > n + 5, 5, "more ticks")
        assert {m.data for m in instructions.msgs[n:]} == {"move a bit to the left"}

        say.publish(String(data="stop"))
        wait_for(lambda: instructions.last.data == "stop", 5, "stop")
        n = instructions.count
        wait_for(lambda: instructions.count > n + 5, 5, "more ticks")
        assert {m.data for m in instructions.msgs[n:]} == {"stop"}
        wait_for(log.is_file, 5, "the corrections log")
        saved = CorrectionLog.load(log)
        assert {e.instruction for e in saved} == {"move a bit to the left", "stop"}
        assert set(saved.obs_keys) == {"cube_pos", "tcp_pose"}
    finally:
        if arm is not None:
            arm.stop()
        if node is not None:
            node.stop()
        h.close()


def test_planner_node_needs_a_planner(ros_domain):
    proc = NodeProcess("planner_node", ros_domain, {})
    assert proc.proc.wait(timeout=30) == 2
    assert "planner" in proc.log()
    proc.stop()


# --- policy_node with a language-conditioned policy ------------------------------------------------


@dataclass
class LangSpec:
    obs: dict = field(default_factory=lambda: {"tcp_pose": ((7,), "float32"), "cube_pos": ((3,), "float32"),
                                               "instruction_embedding": ((384,), "float32")})
    action_dim: int = 4
    control_hz: float = 20.0


@dataclass
class LangPolicy:
    spec: LangSpec = field(default_factory=LangSpec)
    seen: list = field(default_factory=list)
    flushes: int = 0

    def reset(self):
        pass

    def flush(self):
        self.flushes += 1

    def act(self, obs):
        self.seen.append(obs)
        return np.array([0.5, 0.0, 0.0, 1.0], np.float32)  # +x, gripper closed


@needs_minilm
def test_policy_node_follows_the_instruction_topic_and_stops(ros_domain):
    from geometry_msgs.msg import PoseStamped
    from rclpy.parameter import Parameter
    from std_msgs.msg import Float64MultiArray, String

    from serl_ctrl.language.conditioning import InstructionTable
    from serl_ctrl.ros.common import LATCHED_QOS
    from serl_ctrl.ros.policy_node import PolicyNode

    h = RosHarness(ros_domain)
    arm = None
    try:
        targets = h.subscribe(PoseStamped, "cartesian_controller/target_pose")
        grip = h.subscribe(Float64MultiArray, "gripper_controller/commands")
        instruct = h.publisher(String, "instruction", LATCHED_QOS)
        pol = LangPolicy()
        node = PolicyNode(loader=lambda name: pol, context=h.context,
                          parameter_overrides=[Parameter("policy", value="lang"), Parameter("rate_hz", value=20.0),
                                               Parameter("autostart", value=True)])
        h.add_node(node)
        arm = ArmPublisher(h)
        wait_for(lambda: node.held_ticks > 3 and "no instruction yet" in node.last_hold_reason, 10,
                 "a hold until the first instruction")
        assert targets.count == 0
        instruct.publish(String(data="go down"))
        wait_for(lambda: targets.count > 3, 10, "commands once an instruction arrived")
        np.testing.assert_allclose(pol.seen[-1]["instruction_embedding"], InstructionTable()("go down"), atol=1e-6)
        assert targets.last.pose.position.x == pytest.approx(0.5 + 0.5 * 0.03)
        flushes = pol.flushes
        instruct.publish(String(data="ahem, close the gripper"))  # free words are parsed, never executed
        wait_for(lambda: node.instruction == "close the gripper", 5, "the new instruction")
        wait_for(lambda: pol.flushes > flushes, 5, "the queued actions dropped")
        instruct.publish(String(data="gibberish words"))
        time.sleep(0.3)
        assert node.instruction == "close the gripper"
        instruct.publish(String(data="stop"))
        wait_for(lambda: node.instruction == "stop", 5, "stop")
        n_seen = len(pol.seen)
        time.sleep(0.1)  # one tick at 20 Hz is 50 ms: from here on every command is the measured pose
        n = targets.count
        wait_for(lambda: targets.count > n + 3, 5, "hold commands")
        for m in targets.msgs[n:]:
            assert (m.pose.position.x, m.pose.position.y, m.pose.position.z) == pytest.approx((0.5, 0.0, 0.25))
        assert grip.last.data[0] == pytest.approx(0.0)  # closed, as last commanded
        assert len(pol.seen) <= n_seen + 1  # the policy is not run while stopped
    finally:
        if arm is not None:
            arm.stop()
        h.close()
