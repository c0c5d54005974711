"""Distributed SAC over ROS 2: actor_node acting on sim_bridge, learner_node training, weights
flowing back; the pickle-free wire format; sequence-gap reporting."""

from __future__ import annotations

import numpy as np
import pytest
from ros_helpers import NodeProcess, RosHarness, needs_rclpy, ros_domain, wait_for  # noqa: F401

from serl_ctrl.ros import wire

pytestmark = pytest.mark.timeout(180)

SMALL_SAC = """\
sac:
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


# --- ROS ------------------------------------------------------------------------------------------------


def _fake_transition(obs_space, seq, actor_id=7):
    from serl_ctrl.agents.sac import Transition

    obs = {k: np.zeros(s.shape, s.dtype) for k, s in obs_space.spaces.items()}
    return Transition(obs, np.zeros(4, np.float32), 0.0, obs, False, False, seq=seq, actor_id=actor_id)


@needs_rclpy
def test_learner_reports_sequence_gaps_and_publishes_weights(ros_domain, tmp_path, capfd):
    from rclpy.parameter import Parameter
    from std_msgs.msg import UInt8MultiArray

    from serl_ctrl.ros import transport
    from serl_ctrl.ros.common import LATCHED_QOS, STREAM_QOS
    from serl_ctrl.ros.learner_node import LearnerNode

    cfg = tmp_path / "sac.yaml"
    cfg.write_text(SMALL_SAC)
    h = RosHarness(ros_domain)
    try:
        weights = h.subscribe(UInt8MultiArray, "policy/weights", LATCHED_QOS)
        learner = LearnerNode(context=h.context, parameter_overrides=[
            Parameter("task", value="reach"), Parameter("sac_config", value=str(cfg))])
        h.add_node(learner)
        wait_for(lambda: weights.count > 0, 10, "the initial weights (transient local)")
        state, meta = transport.msg_to_weights(weights.last)
        assert meta["policy_version"] == 0 and meta["task"] == "reach"
        assert set(state) == set(learner.agent.actor_state_dict())

        pub = h.publisher(UInt8MultiArray, "transitions", STREAM_QOS)
        wait_for(lambda: pub.get_subscription_count() > 0, 10, "the learner's subscription")
        obs_space, _ = transport.env_spaces("reach", "state")
        for seq in (0, 1, 3, 3):  # 2 is lost, the second 3 is a duplicate
            pub.publish(transport.transition_to_msg(_fake_transition(obs_space, seq)))
        bad = UInt8MultiArray()
        bad.data = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        pub.publish(bad)
        wait_for(lambda: learner.stats()["received"] == 4 and learner.stats()["malformed"] == 1, 10,
                 "all messages to arrive")
        wait_for(lambda: learner.stats()["env_steps"] == 3, 10, "the learner to store them")
        stats = learner.stats()
        assert stats["gaps"] == 1 and stats["duplicates"] == 1, stats
        wait_for(lambda: "sequence gap from actor 7: 1 transition(s) lost before seq 3" in capfd.readouterr().err,
                 5, "the gap in the log")
    finally:
        h.close()


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
            Parameter("sac_config", value=str(cfg)), Parameter("rate_hz", value=20.0),
            Parameter("max_episode_steps", value=20), Parameter("random_steps", value=25),
            Parameter("actor_id", value=3)])
        h.add_node(learner)
        h.add_node(actor)
        wait_for(lambda: learner.stats()["env_steps"] >= 60, 60,
                 f"60 transitions at the learner (actor: seq {actor.seq}, held {actor.held_ticks}, "
                 f"'{actor._hold_reason}'; bridge log: {bridge.log()[-1500:]})")
        wait_for(lambda: actor.policy_version >= 10, 20, "new weights at the actor")
        stats = learner.stats()
        assert stats["gaps"] == 0 and stats["duplicates"] == 0 and stats["malformed"] == 0, stats
        assert stats["policy_version"] >= 30, stats
        assert actor.episodes >= 2 and "reset: episode 3" in bridge.log()
        assert actor.misaligned_rewards == 0

        t, meta = transport.msg_to_transition(stream.msgs[-1])
        assert t.actor_id == 3 and set(t.obs) == {"tcp_pose", "tcp_vel", "gripper", "target_pos"}
        assert t.obs["tcp_pose"].dtype == np.float32 and t.action.shape == (4,)
        assert t.reward in (0.0, 1.0) and "policy_version" in meta
        seqs = [transport.msg_to_transition(m)[0].seq for m in stream.msgs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        h.close()
        bridge.stop()
