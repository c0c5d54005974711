"""Replay buffers: frames stored once, correct next_obs across episode boundaries, eviction,
exact demo/online mixing, reproducible sampling and state_dict round trips."""

from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from serl_ctrl.data.replay import MixedSampler, ReplayBuffer  # noqa: E402

ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def dict_space(h=8, w=8, cams=("front", "wrist")):
    spaces = {c: gym.spaces.Box(0, 255, (h, w, 3), np.uint8) for c in cams}
    spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    return gym.spaces.Dict(spaces)


def make_obs(ep: int, t: int, h=8, w=8, cams=("front", "wrist")):
    """An observation that encodes (episode, step) in every key."""
    o = {c: np.full((h, w, 3), (ep * 37 + t * 3 + i) % 256, np.uint8) for i, c in enumerate(cams)}
    o["state"] = np.array([ep, t, -t], np.float32)
    return o


def run_episodes(buf, lengths, terminal_last=True, start_ep=0):
    """Add episodes of the given lengths; returns the list of expected transitions."""
    expected = []
    for e, n in enumerate(lengths):
        ep = start_ep + e
        for t in range(n):
            o, no = make_obs(ep, t), make_obs(ep, t + 1)
            last = t == n - 1
            term = last and terminal_last and ep % 2 == 0
            trunc = last and not term
            a = np.array([ep / 100, t / 100], np.float32)
            buf.add(o, a, float(t), no, term, trunc)
            expected.append((o, a, float(t), no, term, trunc))
    return expected


def check_transition(got, exp):
    o, a, r, no, term, trunc = exp
    for k in o:
        np.testing.assert_array_equal(got["obs"][k], o[k])
        np.testing.assert_array_equal(got["next_obs"][k], no[k])
    np.testing.assert_array_equal(got["actions"], a)
    assert got["rewards"] == r and got["terminated"] == term and got["truncated"] == trunc


def test_next_obs_across_episode_boundaries():
    buf = ReplayBuffer(dict_space(), ACT, capacity=100)
    exp = run_episodes(buf, [5, 1, 7, 3])  # terminated and truncated endings, a 1-step episode
    assert len(buf) == 16
    # frames: one per step plus one per episode (the first obs); final next_obs kept
    assert buf.frames_stored == 16 + 4
    for i, e in enumerate(exp):
        check_transition(buf.transition(i), e)


def test_frames_not_reused_for_a_different_stream():
    """Interleaved actors (obs != previous next_obs) get their own frames: no corruption."""
    buf = ReplayBuffer(dict_space(), ACT, capacity=100)
    exp = []
    for t in range(4):
        for ep in (0, 1):  # two actors interleaved, never done
            o, no = make_obs(ep, t), make_obs(ep, t + 1)
            a = np.zeros(2, np.float32)
            buf.add(o, a, 0.0, no, False, False)
            exp.append((o, a, 0.0, no, False, False))
    for i, e in enumerate(exp):
        check_transition(buf.transition(i), e)


def test_ring_eviction_keeps_only_complete_transitions():
    buf = ReplayBuffer(dict_space(), ACT, capacity=20, frame_capacity=20)
    exp = run_episodes(buf, [6, 9, 4, 8, 5, 7])
    n = len(buf)
    assert 0 < n <= 20
    # every stored transition equals the last n added ones, frames intact
    for i in range(n):
        check_transition(buf.transition(i), exp[len(exp) - n + i])
    # more frames than slots would be needed for a transition count of 20 with these episodes
    assert buf.frames_stored == 20
    rng = np.random.default_rng(0)
    b = buf.sample(64, rng)
    # sampled next_obs is always the step after obs of the same episode
    st, nst = b["obs"]["state"], b["next_obs"]["state"]
    np.testing.assert_array_equal(st[:, 0], nst[:, 0])
    np.testing.assert_array_equal(st[:, 1] + 1, nst[:, 1])


def test_frame_capacity_larger_than_transitions():
    buf = ReplayBuffer(dict_space(), ACT, capacity=10, frame_capacity=14)
    exp = run_episodes(buf, [4, 4, 4, 4])
    assert len(buf) == 10
    for i in range(10):
        check_transition(buf.transition(i), exp[len(exp) - 10 + i])


def test_box_observations_and_add_episode():
    space = gym.spaces.Box(-10, 10, (3,), np.float32)
    buf = ReplayBuffer(space, ACT, capacity=50)
    obs = np.arange(3 * 6, dtype=np.float32).reshape(6, 3)
    buf.add_episode(obs, np.zeros((5, 2), np.float32), np.arange(5, dtype=np.float32),
                    np.array([0, 0, 0, 0, 1], bool), np.zeros(5, bool))
    assert len(buf) == 5 and buf.frames_stored == 6
    b = buf.sample(8, np.random.default_rng(1))
    assert b["obs"].shape == (8, 3) and b["next_obs"].shape == (8, 3)
    np.testing.assert_array_equal(b["next_obs"] - b["obs"], 3.0)
    assert b["terminated"].sum() == (b["rewards"] == 4).sum()


def test_memory_frames_stored_once_two_128px_cameras():
    space = dict_space(128, 128)
    cap = 1000
    buf = ReplayBuffer(space, ACT, capacity=cap)
    frame = 2 * 128 * 128 * 3 + 3 * 4
    assert buf.bytes_per_frame == frame
    # naive storage of obs and next_obs would be 2 frames per transition; here: one frame plus
    # the 5% frame headroom for episode starts, plus ~30 bytes of action/reward/flags/ids
    assert frame < buf.bytes_per_transition < 1.06 * frame
    # filled with 100-step episodes it really holds `cap` transitions
    img = np.zeros((128, 128, 3), np.uint8)

    def o(step):
        return {"front": img, "wrist": img, "state": np.full(3, step, np.float32)}

    for i in range(1500):
        ep, t = divmod(i, 100)
        buf.add(o(ep * 1000 + t), np.zeros(2, np.float32), 0.0, o(ep * 1000 + t + 1), False,
                t == 99)
    assert len(buf) == cap
    print(f"bytes/transition with 2x128x128x3 cameras: {buf.bytes_per_transition:.0f} "
          f"(one frame = {frame}, naive obs+next_obs = {2 * frame})")


def test_from_episodes_sizes_exactly():
    class Ep:  # the fields of serl_ctrl.data.episodes.Episode that matter here
        def __init__(self, ep, n):
            self.observations = {k: np.stack([make_obs(ep, t)[k] for t in range(n + 1)])
                                 for k in ("front", "wrist", "state")}
            self.actions = np.zeros((n, 2), np.float32)
            self.rewards = np.arange(n, dtype=np.float32)
            self.terminated = np.zeros(n, bool)
            self.truncated = np.arange(n) == n - 1

    eps = [Ep(0, 3), Ep(1, 1), Ep(2, 5)]
    buf = ReplayBuffer.from_episodes(dict_space(), ACT, eps, extra_capacity=4)
    assert len(buf) == 9 and buf.capacity == 13
    assert buf.frames_stored == 9 + 3
    for i, (ep, t) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3),
                                 (2, 4)]):
        tr = buf.transition(i)
        np.testing.assert_array_equal(tr["obs"]["state"], make_obs(ep, t)["state"])
        np.testing.assert_array_equal(tr["next_obs"]["front"], make_obs(ep, t + 1)["front"])
    # headroom: 4 more transitions (e.g. interventions) evict nothing
    run_episodes(buf, [4], start_ep=9)
    assert len(buf) == 13
    np.testing.assert_array_equal(buf.transition(0)["obs"]["state"], make_obs(0, 0)["state"])


def test_oversized_buffer_is_refused_up_front():
    with pytest.raises(MemoryError, match="replay_capacity"):
        ReplayBuffer(dict_space(128, 128), ACT, capacity=10**8)


def test_sampling_is_reproducible():
    buf = ReplayBuffer(dict_space(), ACT, capacity=100)
    run_episodes(buf, [10, 10])
    b1 = buf.sample(32, np.random.default_rng(7))
    b2 = buf.sample(32, np.random.default_rng(7))
    np.testing.assert_array_equal(b1["actions"], b2["actions"])
    np.testing.assert_array_equal(b1["obs"]["front"], b2["obs"]["front"])


def test_mixed_sampler_exact_ratio_per_minibatch():
    demo = ReplayBuffer(dict_space(), ACT, capacity=100)
    online = ReplayBuffer(dict_space(), ACT, capacity=100)
    run_episodes(demo, [10, 10], start_ep=100)
    run_episodes(online, [10, 10], start_ep=0)
    s = MixedSampler(demo, online, demo_fraction=0.5)
    rng = np.random.default_rng(0)
    utd, bs = 4, 64
    b = s.sample(bs, rng, num_minibatches=utd)
    assert len(b["rewards"]) == utd * bs
    from_demo = b["obs"]["state"][:, 0] >= 100   # episode id tells where a row came from
    np.testing.assert_array_equal(from_demo, b["is_demo"])
    for i in range(utd):
        assert from_demo[i * bs:(i + 1) * bs].sum() == bs // 2
    # no demo buffer -> all online
    b = MixedSampler(None, online).sample(bs, rng, num_minibatches=2)
    assert not b["is_demo"].any() and (b["obs"]["state"][:, 0] < 100).all()
    # odd batch: round(0.5 * 7) demo rows in every minibatch
    b = MixedSampler(demo, online, 0.25).sample(8, rng, num_minibatches=3)
    assert [int(b["is_demo"][i * 8:(i + 1) * 8].sum()) for i in range(3)] == [2, 2, 2]


def test_state_dict_round_trip():
    buf = ReplayBuffer(dict_space(), ACT, capacity=20)
    run_episodes(buf, [6, 9, 8])
    sd = buf.state_dict()
    assert all(isinstance(v, np.ndarray) for k, v in sd.items() if k != "counters")
    buf2 = ReplayBuffer(dict_space(), ACT, capacity=20)
    buf2.load_state_dict(sd)
    b1 = buf.sample(16, np.random.default_rng(3))
    b2 = buf2.sample(16, np.random.default_rng(3))
    for k in ("actions", "rewards", "terminated"):
        np.testing.assert_array_equal(b1[k], b2[k])
    np.testing.assert_array_equal(b1["next_obs"]["wrist"], b2["next_obs"]["wrist"])
    # continuing after the load behaves the same
    more1 = run_episodes(buf, [5], start_ep=50)
    run_episodes(buf2, [5], start_ep=50)
    assert len(buf) == len(buf2)
    for i in range(len(buf)):
        t1, t2 = buf.transition(i), buf2.transition(i)
        np.testing.assert_array_equal(t1["obs"]["front"], t2["obs"]["front"])
    check_transition(buf2.transition(len(buf2) - 1), more1[-1])
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(dict_space(), ACT, capacity=10).load_state_dict(sd)


def test_state_dict_loads_into_a_larger_buffer():
    """A wrapped ring loads into a larger buffer (a SAC run resumed with more steps) with the same
    transitions, which the new room then keeps."""
    buf = ReplayBuffer(dict_space(), ACT, capacity=20, frame_capacity=22)
    run_episodes(buf, [6, 9, 8])  # 23 transitions, 26 frames: both rings have wrapped
    big = ReplayBuffer(dict_space(), ACT, capacity=40)
    big.load_state_dict(buf.state_dict())
    assert len(big) == len(buf) > 0

    def same(t1, t2):
        for k in ("obs", "next_obs"):
            for key in t1[k]:
                np.testing.assert_array_equal(t1[k][key], t2[k][key])
        for k in ("actions", "rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(t1[k], t2[k])

    for i in range(len(buf)):
        same(buf.transition(i), big.transition(i))
    n, first = len(big), big.transition(0)
    more = run_episodes(big, [5], start_ep=50)
    assert len(big) == n + 5  # nothing evicted now
    same(big.transition(0), first)
    check_transition(big.transition(len(big) - 1), more[-1])


def test_state_dict_loads_into_a_smaller_buffer_it_fits():
    """A checkpoint of a large, barely used buffer (SAC checkpoints from before run-sized buffers
    had capacity 1M) loads into a smaller one, and a ring too full for it is refused."""
    buf = ReplayBuffer(dict_space(), ACT, capacity=1000)
    exp = run_episodes(buf, [6, 9, 8])
    small = ReplayBuffer(dict_space(), ACT, capacity=23, frame_capacity=26)  # exactly what it holds
    small.load_state_dict(buf.state_dict())
    assert len(small) == 23
    for i, e in enumerate(exp):
        check_transition(small.transition(i), e)
    more = run_episodes(small, [3], start_ep=50)  # both rings wrap now: the oldest transitions go
    kept = (exp + more)[-len(small):]
    assert 0 < len(small) < 23
    for i, e in enumerate(kept):
        check_transition(small.transition(i), e)
    with pytest.raises(ValueError, match="23 transitions over 26 frames"):
        ReplayBuffer(dict_space(), ACT, capacity=23, frame_capacity=25).load_state_dict(buf.state_dict())
