"""Replay buffers: numpy rings that store every observation frame once.

``ReplayBuffer`` keeps two rings:

* a *frame* ring, one preallocated array per observation key (``(capacity, *shape)``, the
  space's dtype: images stay uint8 HWC);
* a *transition* ring: action, reward, terminated, truncated and the two frame ids (obs, next_obs).

Inside an episode ``next_obs`` of step t *is* ``obs`` of step t+1, so each step writes one frame.
``add`` reuses the previous transition's ``next_obs`` frame when the new ``obs`` equals it (checked
with ``np.array_equal``, so interleaved streams from several actors stay correct); otherwise (a
new episode, or a different stream) it writes ``obs`` too. So an episode of length L costs L+1
frames, and the final ``next_obs`` of every episode is kept (terminated *and* truncated).

When the frame ring wraps, transitions whose frames were overwritten are dropped from the front,
so no stored transition ever points at a lost frame. The default frame ring has 5% headroom over
the transition ring (enough for episodes of >= 20 steps); ``from_episodes`` sizes a buffer
exactly for recorded demonstrations. Memory: see ``nbytes`` / ``bytes_per_transition``.

Sampling is uniform over stored transitions with a caller-supplied ``numpy.random.Generator``
(reproducible). ``MixedSampler`` draws an exact share of every minibatch from a demo buffer.
``state_dict()`` / ``load_state_dict()`` use plain dicts of numpy arrays and ints (checkpoints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

__all__ = ["ObsSpec", "ReplayBuffer", "MixedSampler", "Batch"]

Batch = Dict[str, Any]
"""A sampled batch: ``obs``/``next_obs`` (array, or dict of arrays for Dict spaces, leading batch
dim), ``actions`` (B, A) float32, ``rewards`` (B,) float32, ``terminated`` / ``truncated`` (B,)
bool; ``MixedSampler`` adds ``is_demo`` (B,) bool."""

BOX_KEY = "obs"


@dataclass(frozen=True)
class ObsSpec:
    """What the buffers and networks need to know about an observation space.

    A ``Dict`` of ``Box``: keys whose Box is ``uint8`` with 3 dims are camera images (HWC); the
    others are state, flattened and concatenated in sorted key order by the networks. A plain
    ``Box`` is the single key ``"obs"``."""

    is_dict: bool
    keys: Tuple[str, ...]            # all keys, sorted
    image_keys: Tuple[str, ...]      # uint8 HWC keys, sorted
    state_keys: Tuple[str, ...]      # the rest, sorted
    shapes: Mapping[str, Tuple[int, ...]]
    dtypes: Mapping[str, np.dtype]

    @classmethod
    def from_space(cls, space: Any) -> "ObsSpec":
        import gymnasium as gym

        if isinstance(space, gym.spaces.Dict):
            items = {}
            for k, sub in space.spaces.items():
                if not isinstance(sub, gym.spaces.Box):
                    raise TypeError(f"observation key {k!r}: only Box sub-spaces are supported, "
                                    f"got {type(sub).__name__} (flatten or drop it with a wrapper)")
                items[k] = sub
            is_dict = True
        elif isinstance(space, gym.spaces.Box):
            items = {BOX_KEY: space}
            is_dict = False
        else:
            raise TypeError(f"observation space must be Box or Dict of Box, got "
                            f"{type(space).__name__}")
        keys = tuple(sorted(items))
        image_keys = tuple(k for k in keys if cls.is_image(items[k]))
        state_keys = tuple(k for k in keys if k not in image_keys)
        return cls(is_dict=is_dict, keys=keys, image_keys=image_keys, state_keys=state_keys,
                   shapes={k: tuple(items[k].shape) for k in keys},
                   dtypes={k: np.dtype(items[k].dtype) for k in keys})

    @staticmethod
    def is_image(box: Any) -> bool:
        return np.dtype(box.dtype) == np.uint8 and len(box.shape) == 3

    @property
    def state_dim(self) -> int:
        return int(sum(int(np.prod(self.shapes[k])) for k in self.state_keys))

    def as_dict(self, obs: Any) -> Dict[str, Any]:
        """The observation as a dict keyed like ``keys`` (a Box observation becomes {"obs": x})."""
        if self.is_dict:
            return obs
        return {BOX_KEY: obs}

    def from_dict(self, obs: Mapping[str, Any]) -> Any:
        return dict(obs) if self.is_dict else obs[BOX_KEY]

    def is_batched(self, obs: Any) -> bool:
        """Whether ``obs`` carries a leading batch dimension."""
        d = self.as_dict(obs)
        k = self.keys[0]
        return np.ndim(d[k]) == len(self.shapes[k]) + 1


class ReplayBuffer:
    """Ring buffer of transitions with frames stored once (see the module docstring).

    Args:
        observation_space: gymnasium ``Box`` or ``Dict`` of ``Box``.
        action_space: gymnasium ``Box``; actions are stored as float32 ``(A,)`` as given.
        capacity: number of transitions kept.
        frame_capacity: frames kept. An episode of L steps needs L + 1 frames, so the default,
            ``capacity + capacity // 20 + 2``, holds ``capacity`` transitions when episodes
            average >= 20 steps (shorter ones: fewer transitions, never a broken one). Memory
            is dominated by frames: ~``bytes_per_frame * frame_capacity``.
        check_continuity: compare ``obs`` with the previous ``next_obs`` before reusing its
            frame (cheap; turn off only if you guarantee ordered, uninterleaved episodes).
    """

    def __init__(self, observation_space: Any, action_space: Any, capacity: int, *,
                 frame_capacity: Optional[int] = None, check_continuity: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.spec = ObsSpec.from_space(observation_space)
        self.capacity = int(capacity)
        self.frame_capacity = int(frame_capacity if frame_capacity is not None
                                  else capacity + capacity // 20 + 2)
        if self.frame_capacity < 2:
            raise ValueError("frame_capacity must be >= 2")
        self.check_continuity = check_continuity
        self.action_shape = tuple(action_space.shape)
        _check_memory(self.spec, self.capacity, self.frame_capacity,
                      int(np.prod(self.action_shape)))
        self._frames = {k: np.zeros((self.frame_capacity, *self.spec.shapes[k]),
                                    dtype=self.spec.dtypes[k]) for k in self.spec.keys}
        n = self.capacity
        self._obs_fid = np.zeros(n, dtype=np.int64)     # absolute frame ids
        self._next_fid = np.zeros(n, dtype=np.int64)
        self._actions = np.zeros((n, *self.action_shape), dtype=np.float32)
        self._rewards = np.zeros(n, dtype=np.float32)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._frames_written = 0      # absolute count of frames ever written
        self._t_written = 0           # absolute count of transitions ever written
        self._t_start = 0             # absolute id of the oldest transition still valid
        self._last_next_fid = -1      # frame id of the latest next_obs (continuation candidate)
        self._last_done = True

    @classmethod
    def from_episodes(cls, observation_space: Any, action_space: Any, episodes: Any, *,
                      extra_capacity: int = 0) -> "ReplayBuffer":
        """A buffer holding every transition of ``episodes`` (objects with ``observations``,
        ``actions``, ``rewards``, ``terminated``, ``truncated``, as
        ``serl_ctrl.data.episodes.Episode``), sized exactly, plus ``extra_capacity`` transitions
        of headroom (e.g. for human interventions added later, HIL-SERL)."""
        episodes = list(episodes)
        total = sum(len(ep.actions) for ep in episodes)
        extra = int(extra_capacity)
        buf = cls(observation_space, action_space, max(total + extra, 1),
                  frame_capacity=total + len(episodes) + extra + extra // 20 + 2)
        for ep in episodes:
            buf.add_episode(ep.observations, ep.actions, ep.rewards, ep.terminated, ep.truncated)
        return buf

    # ------------------------------------------------------------------ writing
    def __len__(self) -> int:
        return self._t_written - self._t_start

    @property
    def frames_stored(self) -> int:
        return min(self._frames_written, self.frame_capacity)

    def _write_frame(self, obs: Mapping[str, Any]) -> int:
        fid = self._frames_written
        slot = fid % self.frame_capacity
        for k in self.spec.keys:
            self._frames[k][slot] = obs[k]
        self._frames_written += 1
        return fid

    def _frame_alive(self, fid: int) -> bool:
        return fid >= 0 and fid >= self._frames_written - self.frame_capacity

    def _same_as_frame(self, obs: Mapping[str, Any], fid: int) -> bool:
        slot = fid % self.frame_capacity
        return all(np.array_equal(self._frames[k][slot], obs[k]) for k in self.spec.keys)

    def add(self, obs: Any, action: Any, reward: float, next_obs: Any, terminated: bool,
            truncated: bool) -> None:
        """Store one transition (single, unbatched arrays; obs as the space gives them)."""
        o = self.spec.as_dict(obs)
        no = self.spec.as_dict(next_obs)
        prev = self._last_next_fid
        if (not self._last_done and self._frame_alive(prev)
                and (not self.check_continuity or self._same_as_frame(o, prev))):
            obs_fid = prev
        else:
            obs_fid = self._write_frame(o)
        next_fid = self._write_frame(no)
        t = self._t_written
        slot = t % self.capacity
        self._obs_fid[slot] = obs_fid
        self._next_fid[slot] = next_fid
        self._actions[slot] = np.asarray(action, dtype=np.float32).reshape(self.action_shape)
        self._rewards[slot] = reward
        self._terminated[slot] = bool(terminated)
        self._truncated[slot] = bool(truncated)
        self._t_written += 1
        self._last_next_fid = next_fid
        self._last_done = bool(terminated) or bool(truncated)
        # drop transitions whose slot or frames were overwritten (oldest first)
        oldest_frame = self._frames_written - self.frame_capacity
        self._t_start = max(self._t_start, self._t_written - self.capacity)
        while (self._t_start < self._t_written
               and self._obs_fid[self._t_start % self.capacity] < oldest_frame):
            self._t_start += 1

    def add_episode(self, observations: Any, actions: Any, rewards: Any, terminated: Any,
                    truncated: Any) -> None:
        """Store a recorded episode: ``observations`` hold T+1 entries (array, or dict of arrays
        for Dict spaces, as ``serl_ctrl.data.episodes.Episode.observations``), the others T.
        Writes T+1 frames."""
        obs = observations if isinstance(observations, Mapping) else {"obs": observations}
        if not self.spec.is_dict:
            obs = {"obs": obs["obs"]}
        n = len(actions)
        for k in self.spec.keys:
            if len(obs[k]) != n + 1:
                raise ValueError(f"observations[{k!r}] has {len(obs[k])} entries; an episode "
                                 f"with {n} actions needs {n + 1}")
        for t in range(n):
            o = {k: obs[k][t] for k in self.spec.keys}
            no = {k: obs[k][t + 1] for k in self.spec.keys}
            self.add(self.spec.from_dict(o), actions[t], float(rewards[t]),
                     self.spec.from_dict(no), bool(terminated[t]), bool(truncated[t]))

    # ------------------------------------------------------------------ reading
    def stored_frames(self, keys: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
        """The frames currently held (every distinct observation, each once), per key: the data
        to fit observation statistics on. Views, not copies: do not modify."""
        n = self.frames_stored
        return {k: self._frames[k][:n] for k in (self.spec.keys if keys is None else keys)}

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Ring slots of ``batch_size`` transitions drawn uniformly with replacement."""
        n = len(self)
        if n == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return (self._t_start + rng.integers(0, n, size=batch_size)) % self.capacity

    def gather(self, slots: np.ndarray) -> Batch:
        """The transitions at ring ``slots`` as a batch (copies)."""
        of = self._obs_fid[slots] % self.frame_capacity
        nf = self._next_fid[slots] % self.frame_capacity
        obs = {k: self._frames[k][of] for k in self.spec.keys}
        nxt = {k: self._frames[k][nf] for k in self.spec.keys}
        return {
            "obs": self.spec.from_dict(obs),
            "actions": self._actions[slots],
            "rewards": self._rewards[slots],
            "next_obs": self.spec.from_dict(nxt),
            "terminated": self._terminated[slots],
            "truncated": self._truncated[slots],
        }

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """``batch_size`` transitions drawn uniformly (with replacement) using ``rng``."""
        return self.gather(self.sample_indices(batch_size, rng))

    def transition(self, i: int) -> Batch:
        """The i-th stored transition, oldest first (unbatched), for inspection and tests."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = self.gather(np.array([(self._t_start + i) % self.capacity]))
        return {k: (_unbatch(v)) for k, v in b.items()}

    # ------------------------------------------------------------------ memory
    @property
    def nbytes(self) -> int:
        """Bytes held by all preallocated arrays."""
        arrays = list(self._frames.values()) + [self._obs_fid, self._next_fid, self._actions,
                                                  self._rewards, self._terminated, self._truncated]
        return int(sum(a.nbytes for a in arrays))

    @property
    def bytes_per_frame(self) -> int:
        return int(sum(a[0].nbytes for a in self._frames.values()))

    @property
    def bytes_per_transition(self) -> float:
        """Bytes of a full buffer per stored transition (frames included)."""
        return self.nbytes / self.capacity

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Numpy arrays (only the part written so far, if the ring has not wrapped) and ints."""
        nf = min(self._frames_written, self.frame_capacity)
        nt = min(self._t_written, self.capacity)
        d: Dict[str, Any] = {f"frames/{k}": v[:nf] for k, v in self._frames.items()}
        d.update({"obs_fid": self._obs_fid[:nt], "next_fid": self._next_fid[:nt],
                  "actions": self._actions[:nt], "rewards": self._rewards[:nt],
                  "terminated": self._terminated[:nt], "truncated": self._truncated[:nt]})
        d["counters"] = {"capacity": self.capacity, "frame_capacity": self.frame_capacity,
                         "frames_written": self._frames_written, "t_written": self._t_written,
                         "t_start": self._t_start, "last_next_fid": self._last_next_fid,
                         "last_done": self._last_done}
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s contents. The capacities may differ as long as what the
        checkpoint holds (its live transitions and the frames they use) fits: a SAC run sizes its
        buffer to its ``steps`` (``train_sac``), so a run resumed with more steps gets a larger
        buffer, and a checkpoint from before that sizing (capacity 1M) a smaller one."""
        c = state["counters"]
        cap, fcap = int(c["capacity"]), int(c["frame_capacity"])
        fw, tw, t_start = int(c["frames_written"]), int(c["t_written"]), int(c["t_start"])
        obs_fid = np.asarray(state["obs_fid"])
        # oldest frame still needed: the first live transition's, else the last frame (continuity)
        f_lo = int(obs_fid[t_start % cap]) if tw > t_start else max(fw - 1, 0)
        if tw - t_start > self.capacity or fw - f_lo > self.frame_capacity:
            raise ValueError(
                f"replay checkpoint holds {tw - t_start} transitions over {fw - f_lo} frames (its capacity="
                f"{cap}, frame_capacity={fcap}); this buffer has capacity={self.capacity}, "
                f"frame_capacity={self.frame_capacity}")
        for k, arr in self._frames.items():
            _relay(arr, np.asarray(state[f"frames/{k}"]), f_lo, fw, fcap)
        for name in ("obs_fid", "next_fid", "actions", "rewards", "terminated", "truncated"):
            _relay(getattr(self, "_" + name), np.asarray(state[name]), t_start, tw, cap)
        self._frames_written = fw
        self._t_written = tw
        self._t_start = t_start
        self._last_next_fid = int(c["last_next_fid"])
        self._last_done = bool(c["last_done"])


def _relay(dst: np.ndarray, src: np.ndarray, lo: int, hi: int, old_capacity: int) -> None:
    """Copy the items with ids ``lo..hi-1`` of a saved ring (``old_capacity`` slots) into the ring
    ``dst``: slot for slot when the slots are unchanged (same size, or the old ring never wrapped
    and ``dst`` holds it all), else item by item (a copy of the data, so only then)."""
    if len(dst) == old_capacity or (hi <= old_capacity and len(src) <= len(dst)):
        dst[:len(src)] = src
    else:
        ids = np.arange(lo, hi)
        dst[ids % len(dst)] = src[ids % old_capacity]


def _physical_memory() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(spec: ObsSpec, capacity: int, frame_capacity: int, act_size: int) -> None:
    """Refuse, with a useful message, a buffer larger than this machine's RAM (numpy would
    allocate it lazily and the process would be killed much later, when the buffer fills)."""
    frame = sum(int(np.prod(spec.shapes[k])) * spec.dtypes[k].itemsize for k in spec.keys)
    need = frame * frame_capacity + capacity * (16 + 4 * act_size + 4 + 2)
    ram = _physical_memory()
    if ram is not None and need > ram:
        raise MemoryError(
            f"replay buffer of capacity {capacity} needs {need / 2**30:.1f} GiB ({frame} bytes "
            f"per frame x {frame_capacity} frames) but this machine has {ram / 2**30:.1f} GiB: "
            f"lower the capacity (sac.replay_capacity), e.g. to {int(0.5 * ram / frame):,}")


def _unbatch(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: x[0] for k, x in v.items()}
    return v[0]


def _stack_mix(d: Any, o: Any, m: int) -> Any:
    """Interleave per minibatch: m rows of [demo part | online part], flattened back."""
    if isinstance(d, dict):
        return {k: _stack_mix(d[k], o[k], m) for k in d}
    d = d.reshape(m, -1, *d.shape[1:])
    o = o.reshape(m, -1, *o.shape[1:])
    out = np.concatenate([d, o], axis=1)
    return out.reshape(-1, *out.shape[2:])


class MixedSampler:
    """Batches with an exact share from a demo buffer (RLPD's symmetric sampling).

    Every minibatch of ``batch_size`` holds ``round(batch_size * demo_fraction)`` demo rows
    followed by online rows; with ``num_minibatches=m`` the result is m such minibatches
    concatenated (``m * batch_size`` rows), so slicing it into m equal parts keeps the ratio in
    each part. Without a demo buffer (or an empty one) every row is online."""

    def __init__(self, demo_buffer: Optional[ReplayBuffer], online_buffer: ReplayBuffer,
                 demo_fraction: float = 0.5) -> None:
        if not 0.0 <= demo_fraction <= 1.0:
            raise ValueError(f"demo_fraction must be in [0, 1], got {demo_fraction}")
        self.demo = demo_buffer
        self.online = online_buffer
        self.demo_fraction = float(demo_fraction)

    def n_demo(self, batch_size: int) -> int:
        if self.demo is None or len(self.demo) == 0:
            return 0
        if len(self.online) == 0:
            return batch_size
        return int(round(batch_size * self.demo_fraction))

    def __len__(self) -> int:
        return len(self.online) + (len(self.demo) if self.demo is not None else 0)

    def sample(self, batch_size: int, rng: np.random.Generator, num_minibatches: int = 1) -> Batch:
        m = int(num_minibatches)
        nd = self.n_demo(batch_size)
        no = batch_size - nd
        if nd == 0:
            b = self.online.sample(m * batch_size, rng)
            b["is_demo"] = np.zeros(m * batch_size, dtype=bool)
            return b
        if no == 0:
            b = self.demo.sample(m * batch_size, rng)  # type: ignore[union-attr]
            b["is_demo"] = np.ones(m * batch_size, dtype=bool)
            return b
        db = self.demo.sample(m * nd, rng)  # type: ignore[union-attr]
        ob = self.online.sample(m * no, rng)
        db["is_demo"] = np.ones(m * nd, dtype=bool)
        ob["is_demo"] = np.zeros(m * no, dtype=bool)
        return {k: _stack_mix(db[k], ob[k], m) for k in db}
