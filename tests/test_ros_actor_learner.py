"""Distributed SAC over ROS 2: actor_node acting on sim_bridge, learner_node training, policy
versions flowing back as ONNX; the pickle-free wire format; sequence-gap reporting; checkpoints;
and the actor and learner as separate processes improving a reach policy."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from ros_helpers import NodeProcess, RosHarness, needs_rclpy, ros_domain, wait_for  # noqa: F401

from serl_ctrl.ros import wire

pytestmark = pytest.mark.timeout(180)

SMALL_SAC = """\
sac:
  compile: false
  hidden_dims: [32, 32]
  n_critics: 2
  utd: 1
  batch_size: 16
  learning_starts: 20
  random_steps: 0
  replay_capacity: 5000
"""


# --- the wire format (no ROS needed) -------------------------------------------------------------------


def test_wire_roundtrip_keeps_names_dtypes_shapes_and_meta():
    rng = np.random.default_rng(0)
    arrays = {
        "obs/front": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
        "obs/tcp_pose": rng.normal(size=7).astype(np.float32),
        "reward": np.asarray(1.0, dtype=np.float32),
        "terminated": np.asarray(True),
        "seq": np.asarray(12345678901, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float64),
        "big_endian": np.arange(3, dtype=">f4"),
    }
    data = wire.pack(arrays, {"kind": "transition", "policy_version": 3})
    out, meta = wire.unpack(data)
    assert meta == {"kind": "transition", "policy_version": 3}
    assert list(out) == list(arrays)
    for k, v in arrays.items():
        assert out[k].shape == v.shape and out[k].dtype == v.dtype.newbyteorder("=")
        np.testing.assert_array_equal(out[k], v)
    assert out["obs/front"].flags.writeable  # a copy, independent of the message buffer
    # memoryviews / array.array (what rclpy hands out) work too
    import array

    out2, _ = wire.unpack(array.array("B", data))
    np.testing.assert_array_equal(out2["obs/tcp_pose"], arrays["obs/tcp_pose"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"XXXX" + d[4:], "not a serl_ctrl array message"),
        (lambda d: d[:6], "too short"),
        (lambda d: d[:5] + (10**7).to_bytes(4, "little") + d[9:], "does not fit"),
        (lambda d: d[:-8], "outside the payload"),
        (lambda d: d[:4] + bytes([9]) + d[5:], "version 9"),
    ],
)
def test_wire_rejects_malformed_bytes(mutate, message):
    data = wire.pack({"a": np.arange(4, dtype=np.float64)})
    with pytest.raises(wire.WireError, match=message):
        wire.unpack(mutate(data))


def test_wire_never_carries_objects():
    with pytest.raises(ValueError, match="dtype object"):
        wire.pack({"evil": np.array([{"a": 1}], dtype=object)})
    # A header that claims an object dtype is refused before anything is decoded.
    import json
    import struct

    header = json.dumps({"meta": {}, "arrays": [{"name": "a", "dtype": "object", "shape": [1], "offset": 0,
                                                 "nbytes": 8}]}).encode()
    forged = struct.pack("<4sBI", wire.MAGIC, 1, len(header)) + header + b"\0" * 16
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.unpack(forged)


# --- policy versions as ONNX: torch on the learner's side, NumPy + onnxruntime on the actor's -------


def _reach_agent(config=None, seed: int = 0):
    from serl_ctrl.agents.sac import SACAgent
    from serl_ctrl.ros import transport

    obs_space, act_space = transport.env_spaces("reach", "state")
    return SACAgent(obs_space, act_space, config or {"hidden_dims": [32, 32], "n_critics": 2}, seed=seed)


def _reach_obs(seed: int = 0) -> dict:
    from serl_ctrl.envs import make_env

    env = make_env("reach")
    try:
        obs, _ = env.reset(seed=seed)
        for _ in range(3):
            obs, *_ = env.step(env.action_space.sample())
        return obs
    finally:
        env.close()


@pytest.fixture(scope="module")
def versions():
    """One agent and its exported graph for the module (the export costs seconds)."""
    import torch

    from serl_ctrl.export.versions import SacOnnxVersions
    from serl_ctrl.runtime.spec import PolicySpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    agent = _reach_agent()
    spec = PolicySpec.from_spaces(agent.observation_space, agent.action_space, algo="sac", task="reach",
                                  obs_mode="state")
    yield agent, SacOnnxVersions(agent, spec)
    torch.set_num_threads(threads)


def _train_a_little(agent, seed: int) -> None:
    """Change every weight and fit the state normaliser, as training does."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*agent.actor.parameters(), *agent.encoder.parameters()]:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    rng = np.random.default_rng(seed)
    agent.fit_state_normalizer({k: rng.normal(0.3, 0.1, (64, *s.shape)) for k, s in agent.observation_space.items()})


def test_policy_versions_swap_weights_and_match_torch(versions, tmp_path):
    import torch

    from serl_ctrl.runtime import load_policy
    from serl_ctrl.runtime.exploration import ExplorationPolicy

    agent, v = versions
    assert "encoder.state_norm.scale" in v.mapped and "actor.head.weight" in v.mapped
    assert v.unused == ("encoder.state_norm_fitted",)  # a flag the forward pass never reads
    first = v.version(agent.actor_state_dict(), 0)
    assert first.parity_max_abs_diff <= 1e-5
    _train_a_little(agent, seed=1)
    second = v.version(agent.actor_state_dict(), 7)
    assert second.parity_max_abs_diff <= 1e-5 and second.sha256 != first.sha256
    assert second.export_ms < 2000  # no re-export: milliseconds

    obs = _reach_obs()
    policy = ExplorationPolicy(second.data, sha256=second.sha256)
    assert policy.policy_version == 7 and policy.spec.extra["outputs"] == ["action", "mean", "log_std"]
    np.testing.assert_allclose(policy.act(obs), agent.act(obs, deterministic=True), atol=1e-5)
    with torch.no_grad():
        t = {k: torch.as_tensor(np.asarray(x, np.float32))[None] for k, x in obs.items()}
        mean, log_std = agent.actor(agent.encoder(t))
    _, got_mean, got_log_std = policy.outputs(obs)
    np.testing.assert_allclose(got_mean, mean[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got_log_std, log_std[0].numpy(), atol=1e-5)
    # Exploration: tanh(mean + exp(log_std) * eps) * scale + center with the caller's noise.
    eps = np.random.default_rng(3).standard_normal(4).astype(np.float32)
    expected = np.tanh(got_mean + np.exp(got_log_std) * eps) * policy.scale + policy.center
    np.testing.assert_allclose(policy.act(obs, np.random.default_rng(3)), np.clip(expected, -1, 1), atol=1e-6)
    samples = np.stack([policy.act(obs, np.random.default_rng(i)) for i in range(50)])
    assert samples.std(axis=0).min() > 1e-3  # it explores
    # A version is an ordinary deployable policy file (its first output is the deterministic action).
    path = tmp_path / "version.onnx"
    path.write_bytes(second.data)
    np.testing.assert_allclose(load_policy(path).act(obs), agent.act(obs, deterministic=True), atol=1e-5)


def test_policy_versions_fail_loudly(versions):
    from serl_ctrl.runtime.exploration import ExplorationPolicy, PolicyIntegrityError

    agent, v = versions
    state = agent.actor_state_dict()
    with pytest.raises(ValueError, match=r"missing \['actor.head.bias'\]"):
        v.version({k: x for k, x in state.items() if k != "actor.head.bias"}, 1)
    with pytest.raises(ValueError, match=r"unknown \['actor.extra'\]"):
        v.version({**state, "actor.extra": state["actor.head.bias"]}, 1)
    with pytest.raises(ValueError, match="shape"):
        v.version({**state, "actor.head.bias": state["actor.head.bias"][:3]}, 1)
    with pytest.raises(ValueError, match="NaN"):
        v.version({**state, "actor.head.bias": state["actor.head.bias"] * float("nan")}, 1)
    # An entry the policy reads must have its own initializer; the check that proves it says so.
    with pytest.raises(ValueError, match="'actor.head.weight' changes the policy's outputs"):
        v._prove_unused(["actor.head.weight"])
    good = v.version(state, 2)
    with pytest.raises(PolicyIntegrityError, match="does not match"):
        ExplorationPolicy(good.data, sha256=good.sha256[::-1])
    with pytest.raises(PolicyIntegrityError):
        ExplorationPolicy(good.data[:-10], sha256=good.sha256)


ACTOR_WITHOUT_TORCH = r"""
import json, sys, time
import numpy as np
import rclpy
from rclpy.parameter import Parameter
from serl_ctrl.ros import transport
from serl_ctrl.ros.actor_node import ActorNode

data = open(sys.argv[1], "rb").read()
sha = sys.argv[2]
ctx = rclpy.Context()
rclpy.init(context=ctx)
node = ActorNode(context=ctx, parameter_overrides=[Parameter("task", value="reach"), Parameter("reward", value="dense")])

def deliver(version, sha256, until, **meta):
    meta = {"task": "reach", "obs": "state", "reward": "dense", "learner_id": "L1", **meta}
    node._on_policy(transport.onnx_to_msg(data, version, sha256, **meta))
    deadline = time.monotonic() + 20
    while not until():
        assert time.monotonic() < deadline, "the policy was not handled in time"
        time.sleep(0.01)
    node._swap_if_pending()  # what the next tick does first

deliver(3, sha, lambda: node._incoming is not None)
loaded = node.policy_version
deliver(4, "0" * 64, lambda: node.rejected_policies == 1)  # corrupted: ignored, version 3 stays
deliver(5, sha, lambda: node.rejected_policies == 2, reward="sparse")  # trained on other rewards
obs = {k: np.zeros(shape, np.float32) for k, (shape, _) in node.builder.fields.items()}
action = node.policy.act(obs, node.rng)
print(json.dumps({"torch": "torch" in sys.modules, "loaded": loaded, "version": node.policy_version,
                  "rejected": node.rejected_policies, "action": action.tolist()}))
node.destroy_node()
rclpy.try_shutdown(context=ctx)
"""


@needs_rclpy
def test_actor_policy_path_needs_no_torch(versions, ros_domain, tmp_path):
    """The actor node checks, loads and acts with a policy version in a process that never imports torch."""
    agent, v = versions
    version = v.version(agent.actor_state_dict(), 3)
    path = tmp_path / "policy.onnx"
    path.write_bytes(version.data)
    out = subprocess.run([sys.executable, "-c", ACTOR_WITHOUT_TORCH, str(path), version.sha256], env=ros_domain.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False, "the actor imported torch"
    assert result["loaded"] == 3 and result["version"] == 3 and result["rejected"] == 2, result
    assert "policy version 4 ignored, keeping version 3" in out.stderr and "does not match" in out.stderr
    assert "trains on sparse rewards" in out.stderr
    assert np.all(np.abs(result["action"]) <= 1.0)


# --- ROS: the learner node ----------------------------------------------------------------------------


def _fake_transition(obs_space, seq, actor_id=7):
    from serl_ctrl.agents.sac import Transition

    obs = {k: np.zeros(s.shape, s.dtype) for k, s in obs_space.spaces.items()}
    return Transition(obs, np.zeros(4, np.float32), 0.0, obs, False, False, seq=seq, actor_id=actor_id)


def _remove_node(h, node) -> None:
    h.executor.remove_node(node)
    h._extra_nodes.remove(node)
    node.close()
    node.destroy_node()


@needs_rclpy
def test_learner_reports_gaps_publishes_onnx_and_resumes(ros_domain, tmp_path, capfd):
    from rclpy.parameter import Parameter
    from std_msgs.msg import UInt8MultiArray

    from serl_ctrl.agents.checkpoint import latest_checkpoint
    from serl_ctrl.ros import transport
    from serl_ctrl.ros.common import LATCHED_QOS, STREAM_QOS
    from serl_ctrl.ros.learner_node import LearnerNode
    from serl_ctrl.runtime.exploration import ExplorationPolicy

    cfg = tmp_path / "sac.yaml"
    cfg.write_text(SMALL_SAC)
    ckpt = tmp_path / "ckpt"
    params = [Parameter("task", value="reach"), Parameter("sac_config", value=str(cfg)),
              Parameter("checkpoint_dir", value=str(ckpt)), Parameter("checkpoint_every", value=2)]
    h = RosHarness(ros_domain)
    try:
        policies = h.subscribe(UInt8MultiArray, "policy/onnx", LATCHED_QOS)
        learner = LearnerNode(context=h.context, parameter_overrides=params)
        h.add_node(learner)
        wait_for(lambda: policies.count > 0, 10, "policy version 0 (transient local)")
        data, meta = transport.msg_to_onnx(policies.last)
        assert meta["policy_version"] == 0 and meta["task"] == "reach" and meta["reward"] == "sparse"
        assert ExplorationPolicy(data, sha256=meta["sha256"]).policy_version == 0

        pub = h.publisher(UInt8MultiArray, "transitions", STREAM_QOS)
        wait_for(lambda: pub.get_subscription_count() > 0, 10, "the learner's subscription")
        obs_space, _ = transport.env_spaces("reach", "state")

        def send(seq, session="A", **meta):
            pub.publish(transport.transition_to_msg(_fake_transition(obs_space, seq), session=session,
                                                    reward=meta.get("reward", "sparse")))

        for seq in (0, 1, 3, 3):  # 2 is lost, the second 3 is a duplicate
            send(seq)
        bad = UInt8MultiArray()
        bad.data = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        pub.publish(bad)
        send(4, reward="dense")  # another reward mode: dropped, counted
        for seq in (0, 1):  # the actor restarted: a new session numbers from 0 again
            send(seq, session="B")
        wait_for(lambda: learner.stats()["env_steps"] == 5, 10, f"5 stored transitions ({learner.stats()})")
        stats = learner.stats()
        assert stats["gaps"] == 1 and stats["duplicates"] == 1 and stats["malformed"] == 1, stats
        assert stats["mismatched_reward"] == 1 and stats["actor_restarts"] == 1, stats
        assert stats["checkpoints"] >= 1, stats
        wait_for(lambda: "sequence gap from actor 7: 1 transition(s) lost before seq 3" in capfd.readouterr().err,
                 5, "the gap in the log")
        _remove_node(h, learner)  # shutdown writes a last checkpoint
        assert latest_checkpoint(ckpt).name == "ckpt_000000005.json"

        resumed = LearnerNode(context=h.context, parameter_overrides=[*params, Parameter("resume", value=True)])
        h.add_node(resumed)
        stats = resumed.stats()
        assert stats["env_steps"] == 5 and stats["gaps"] == 1 and stats["duplicates"] == 1, stats
        wait_for(lambda: transport.msg_to_onnx(policies.last)[1]["learner_id"] == resumed.learner_id, 10,
                 "the resumed learner's policy version")
        send(2, session="B")  # the same actor session goes on: no gap, no duplicate
        wait_for(lambda: resumed.stats()["env_steps"] == 6, 10, "the resumed learner to store it")
        assert resumed.stats()["gaps"] == 1 and resumed.stats()["duplicates"] == 1
    finally:
        h.close()


@needs_rclpy
def test_sim_clock_never_runs_backwards():
    """/clock and every stamp of sim_bridge: float sums of physics steps land just below whole
    seconds (24.9999999999996), which must read 25 s + 0 ns, not 24 s + 0 ns."""
    from types import SimpleNamespace

    from builtin_interfaces.msg import Time

    from serl_ctrl.ros.sim_bridge import SimBridge

    fake = SimpleNamespace(arm=SimpleNamespace(time=0.0), msg_clock=SimpleNamespace(clock=Time()))
    last = -1
    for _ in range(20_000):  # 40 s of 2 ms physics steps
        fake.arm.time += 0.002
        stamp = SimBridge._stamp(fake)
        ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        assert ns > last and abs(ns - fake.arm.time * 1e9) < 1.0, (fake.arm.time, stamp)
        last = ns


# --- ROS: actor and learner against sim_bridge --------------------------------------------------------


@needs_rclpy
def test_actor_and_learner_train_against_sim_bridge(ros_domain, tmp_path):
    from rclpy.parameter import Parameter
    from std_msgs.msg import UInt8MultiArray

    from serl_ctrl.ros import transport
    from serl_ctrl.ros.actor_node import ActorNode
    from serl_ctrl.ros.common import STREAM_QOS
    from serl_ctrl.ros.learner_node import LearnerNode

    cfg = tmp_path / "sac.yaml"
    cfg.write_text(SMALL_SAC)
    bridge = NodeProcess("sim_bridge", ros_domain, {"task": "reach", "rate_hz": 100.0})
    h = RosHarness(ros_domain)
    try:
        stream = h.subscribe(UInt8MultiArray, "transitions", STREAM_QOS)
        learner = LearnerNode(context=h.context, parameter_overrides=[
            Parameter("task", value="reach"), Parameter("sac_config", value=str(cfg)),
            Parameter("publish_every", value=10)])
        actor = ActorNode(context=h.context, parameter_overrides=[
            Parameter("use_sim_time", value=True), Parameter("task", value="reach"),
            Parameter("rate_hz", value=20.0), Parameter("max_episode_steps", value=20),
            Parameter("random_steps", value=25), Parameter("actor_id", value=3)])
        h.add_node(learner)
        h.add_node(actor)
        wait_for(lambda: learner.stats()["env_steps"] >= 60, 60,
                 f"60 transitions at the learner (actor: seq {actor.seq}, held {actor.held_ticks}, "
                 f"'{actor._hold_reason}'; bridge log: {bridge.log()[-1500:]})")
        wait_for(lambda: actor.policy_version >= 10, 20, "new policy versions at the actor")
        stats = learner.stats()
        assert stats["gaps"] == 0 and stats["duplicates"] == 0 and stats["malformed"] == 0, stats
        assert stats["policy_version"] >= 30, stats
        assert actor.episodes >= 2 and "reset: episode 3" in bridge.log()
        assert actor.misaligned_rewards == 0 and actor.rejected_policies == 0 and actor.policy_swaps >= 2

        t, meta = transport.msg_to_transition(stream.msgs[-1])
        assert t.actor_id == 3 and set(t.obs) == {"tcp_pose", "tcp_vel", "gripper", "target_pos"}
        assert t.obs["tcp_pose"].dtype == np.float32 and t.action.shape == (4,)
        assert t.reward in (0.0, 1.0) and meta["reward"] == "sparse" and meta["session"] == actor.session
        assert meta["policy_version"] >= 0  # chosen by a policy version (the random steps say -1)
        seqs = [transport.msg_to_transition(m)[0].seq for m in stream.msgs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        h.close()
        bridge.stop()


# --- ROS: actor and learner as separate processes improve a reach policy -------------------------------

REACH_SAC = """\
sac:
  hidden_dims: [128, 128]
  batch_size: 128
  n_critics: 10
  utd: 4
  learning_starts: 100
  random_steps: 0
"""
EVAL_SEEDS = range(20_000, 20_020)


def evaluate_version(data: bytes, seeds=EVAL_SEEDS) -> dict:
    """The version's deterministic action in an in-process PandaEnv (reach, dense), onnxruntime only."""
    from serl_ctrl.envs import make_env
    from serl_ctrl.runtime.exploration import ExplorationPolicy

    policy = ExplorationPolicy(data)
    env = make_env("reach", reward="dense")
    successes, returns = 0, []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            total, success, done = 0.0, False, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(policy.act(obs))
                total += float(reward)
                success = success or bool(info["success"])
                done = terminated or truncated
            successes += int(success)
            returns.append(total)
    finally:
        env.close()
    return {"success_rate": successes / len(seeds), "mean_return": float(np.mean(returns))}


class _Versions:
    """Keeps version 0 and the newest policy version from policy/onnx (not every file)."""

    def __init__(self) -> None:
        self.first = None
        self.latest = None
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, msg) -> None:
        from serl_ctrl.ros import transport

        data, meta = transport.msg_to_onnx(msg)
        with self._lock:
            self.count += 1
            if meta["policy_version"] == 0 and self.first is None:
                self.first = (data, meta)
            if self.latest is None or meta["policy_version"] > self.latest[1]["policy_version"]:
                self.latest = (data, meta)


class _Stream:
    """Sequence numbers and sessions of the transitions, decoded from the header only."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.sessions: set[str] = set()

    def __call__(self, msg) -> None:
        from serl_ctrl.ros import wire

        arrays, meta = wire.unpack(msg.data)
        self.seqs.append(int(arrays["seq"]))
        self.sessions.add(meta["session"])


@needs_rclpy
@pytest.mark.timeout(420)
def test_actor_and_learner_processes_improve_a_reach_policy(ros_domain, tmp_path):
    """sim_bridge, learner_node and actor_node, each its own process in this test's ROS_DOMAIN_ID,
    train SAC (dense reward, 10 scripted demos) over ROS 2; the newest ONNX version from
    policy/onnx then reaches better than version 0 in a plain in-process PandaEnv.

    The simulator runs at 3x real time in lockstep with the 10 Hz actor (simulated time). Every 200
    env steps the learner has trained on, from 800 on, the newest version is evaluated
    deterministically on 20 fixed seeds; the test passes at the first evaluation with success >=
    0.35 (version 0: 0 of 20; 7 of 20 is p < 0.01 against it) and a mean return at least 20 above
    version 0's (of at most 50; version 0 gets ~1), and fails if none does by 2400 env steps.
    Measured on a loaded 2-core machine: 0.4-0.45 success and returns 24-27 at ~1000 env steps
    (~55 s), 0.5-0.6 after 1400-2200. (In-process SAC with this config reaches 0.45-0.9 at 1000
    steps depending on the seed; the bar stays below what every run reached.)"""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import UInt8MultiArray

    from serl_ctrl.agents.checkpoint import latest_checkpoint
    from serl_ctrl.data.demos import record_demonstrations
    from serl_ctrl.ros.common import LATCHED_QOS, STATE_QOS, STREAM_QOS, diagnostic_values

    start = time.monotonic()
    demos = tmp_path / "demos"
    record_demonstrations("reach", demos, 10, reward="dense")
    cfg = tmp_path / "sac.yaml"
    cfg.write_text(REACH_SAC)
    ckpt = tmp_path / "ckpt"
    env = ros_domain.env
    env["OMP_NUM_THREADS"] = "1"
    timeout = {"command_timeout_s": 2.0}  # simulated seconds: 0.67 s of wall time at 3x
    bridge_start = time.monotonic()
    bridge = NodeProcess("sim_bridge", ros_domain, {"task": "reach", "rate_hz": 50.0, "real_time_factor": 3.0,
                                                     "lockstep_hz": 10.0, **timeout}, log_dir=tmp_path)
    learner = NodeProcess("learner_node", ros_domain, {
        "task": "reach", "reward": "dense", "sac_config": str(cfg), "demos": str(demos), "publish_every": 10,
        "checkpoint_dir": str(ckpt), "checkpoint_every": 500, "threads": 1}, log_dir=tmp_path)
    actor = NodeProcess("actor_node", ros_domain, {"use_sim_time": True, "task": "reach", "reward": "dense",
                                                   "rate_hz": 10.0, "random_steps": 0, "actor_id": 1, **timeout},
                        log_dir=tmp_path)
    h = RosHarness(ros_domain)
    versions, stream, diag = _Versions(), _Stream(), {}

    def on_diag(msg) -> None:
        for status in msg.status:
            diag[status.name.split(":")[0]] = diagnostic_values(DiagnosticArray(status=[status]))

    def logs() -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-2500:]}" for p in (bridge, learner, actor))

    try:
        h.node.create_subscription(UInt8MultiArray, "policy/onnx", versions, LATCHED_QOS)
        h.node.create_subscription(UInt8MultiArray, "transitions", stream, STREAM_QOS)
        h.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, STATE_QOS)
        wait_for(lambda: versions.first is not None, 90, f"policy version 0 from the learner\n{logs()}")
        baseline = evaluate_version(versions.first[0])
        history = []
        for goal in range(800, 2401, 200):
            wait_for(lambda: versions.latest[1]["env_steps"] >= goal, 150,
                     f"a version trained on {goal} env steps (now {versions.latest[1]['env_steps']}; "
                     f"evaluations {history})\n{logs()}")
            data, meta = versions.latest
            t0 = time.monotonic()
            history.append({"env_steps": meta["env_steps"], "version": meta["policy_version"],
                            **evaluate_version(data), "eval_s": round(time.monotonic() - t0, 1)})
            best = history[-1]
            if best["success_rate"] >= 0.35 and best["mean_return"] >= baseline["mean_return"] + 20.0:
                break
        trained_for = time.monotonic() - start
        rtf = float(diag["sim_bridge"]["sim_time_s"]) / (time.monotonic() - bridge_start)  # start-up included
        print(f"\nversion 0: {baseline}; evaluations: {history}; {trained_for:.0f} s from start; "
              f"simulated time ran {rtf:.2f}x the wall clock")
        assert best["success_rate"] >= 0.35 and best["mean_return"] >= baseline["mean_return"] + 20.0, (
            f"no improvement: version 0 {baseline}, evaluations {history}")
        assert baseline["success_rate"] <= 0.1  # the untrained policy does not reach (not a tautology)

        # Nothing lost: the learner saw every transition once; the stream is contiguous.
        assert actor.stop() == 0
        sent = len(stream.seqs)
        assert stream.seqs == list(range(stream.seqs[0], stream.seqs[0] + sent)) and len(stream.sessions) == 1
        wait_for(lambda: int(diag.get("learner_node", {}).get("received", -1)) >= stream.seqs[-1] + 1, 30,
                 f"the learner's diagnostics to count all {stream.seqs[-1] + 1} transitions ({diag})")
        ld = diag["learner_node"]
        assert ld["gaps"] == "0" and ld["duplicates"] == "0" and ld["malformed"] == "0", ld
        ad = diag["actor_node"]
        assert int(ad["policy_swaps"]) >= 5 and ad["rejected_policies"] == "0" and ad["errors"] == "0", ad
        bd = diag["sim_bridge"]
        assert rtf > 1.2, (rtf, bd)  # faster than real time on average, even waiting for the actor
        # Lockstep: every step lasted one period (the rare exception: a lockstep timeout under load).
        assert int(ad["irregular_steps"]) <= 0.01 * int(ad["env_steps"]), (ad, bd)
        print(f"actor: {ad}\nlearner: {ld}\nbridge: {bd}")
        assert learner.stop(timeout=60) == 0  # a last checkpoint at shutdown
        assert latest_checkpoint(ckpt) is not None
    finally:
        h.close()
        for p in (actor, learner, bridge):
            p.stop()
