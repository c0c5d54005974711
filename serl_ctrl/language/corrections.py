"""The corrections log: every language correction with the observation history it answered.

When a person (or the scripted human of the simulation) corrects the robot, the hierarchy
(:mod:`serl_ctrl.language.hierarchy`) appends one :class:`CorrectionEntry` for every control tick
the correction is in force (as YAY Robot relabels the corrected segment): the last ``history``
observations (state keys only, the latest last), the instruction the planner had chosen, the
correction's canonical instruction, the words heard or typed, where they came from, and when. The
entries of one correction share a ``group`` number; "stop" and speed changes get one entry.
``serl-ctrl finetune-planner`` trains the planner on these pairs (observation history -> corrected
instruction), mixed with its original labels (:func:`serl_ctrl.language.planner.finetune_planner`).

On disk a log is ONE ``.npz`` file (numpy only, no pickle, ``allow_pickle=False`` on read),
rewritten atomically by :meth:`CorrectionLog.save` (a reader sees the old or the new file, never
half of one):

====================  ==================  ===============================================
key                   dtype, shape        meaning
====================  ==================  ===============================================
``obs/<key>``         float32 (N, H, d)   observation history of each entry, latest last
``instruction``       <U (N,)             the correction (a canonical instruction)
``planner``           <U (N,)             what the planner had chosen ("" if none)
``kind``              <U (N,)             translate, gripper, skill, stop or speed
``text``              <U (N,)             the words heard / typed (stored, never executed)
``source``            <U (N,)             scripted, typed, speech, wav, ros ...
``episode``, ``step`` int64 (N,)          where in a run it happened
``group``             int64 (N,)          which correction: one entry per control tick it held
``time``              float64 (N,)        seconds since the epoch
``metadata``          <U ()               JSON: format, version, obs_keys, history, extra
====================  ==================  ===============================================
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..utils.atomic import atomic_path

__all__ = ["CorrectionEntry", "CorrectionLog", "FORMAT", "VERSION"]

FORMAT = "serl_ctrl.corrections"
VERSION = 1
_STR_KEYS = ("instruction", "planner", "kind", "text", "source")


@dataclass
class CorrectionEntry:
    """One correction: ``obs[key]`` is ``(history, dim)`` float32, the latest observation last."""

    obs: dict[str, np.ndarray]
    instruction: str
    planner: str = ""
    kind: str = ""
    text: str = ""
    source: str = ""
    episode: int = -1
    step: int = -1
    time: float = field(default_factory=time.time)
    group: int = -1  # entries of one correction (one per control tick it was in force) share it


class CorrectionLog:
    """An in-memory list of :class:`CorrectionEntry` with a fixed observation layout.

    Args:
        obs_keys: the (state) observation keys stored for every entry.
        history: how many observations each entry holds (the latest last).
        metadata: extra JSON-able facts saved with the log (task, planner, ...).
    """

    def __init__(self, obs_keys: Sequence[str], history: int = 1, metadata: Mapping[str, Any] | None = None) -> None:
        if not obs_keys:
            raise ValueError("a corrections log needs at least one observation key")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.obs_keys = tuple(obs_keys)
        self.history = int(history)
        self.metadata = dict(metadata or {})
        self.entries: list[CorrectionEntry] = []
        self._dims: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CorrectionEntry]:
        return iter(self.entries)

    def append(self, entry: CorrectionEntry) -> None:
        """Add one entry; its observation history must match the log's keys and length."""
        obs = {}
        for k in self.obs_keys:
            if k not in entry.obs:
                raise KeyError(f"correction entry lacks observation {k!r}; the log stores {list(self.obs_keys)}")
            v = np.asarray(entry.obs[k], dtype=np.float32)
            v = v.reshape(v.shape[0], -1) if v.ndim >= 2 else v.reshape(1, -1)
            if v.shape[0] != self.history:
                raise ValueError(f"observation {k!r} has a history of {v.shape[0]}; the log stores {self.history}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"observation {k!r} is not finite")
            dim = self._dims.setdefault(k, v.shape[1])
            if v.shape[1] != dim:
                raise ValueError(f"observation {k!r} has {v.shape[1]} values; earlier entries have {dim}")
            obs[k] = v
        for name in _STR_KEYS:
            if "\x00" in str(getattr(entry, name)):
                raise ValueError(f"correction {name} contains a NUL character")
        self.entries.append(CorrectionEntry(obs, str(entry.instruction), str(entry.planner), str(entry.kind),
                                            str(entry.text), str(entry.source), int(entry.episode),
                                            int(entry.step), float(entry.time), int(entry.group)))

    def extend(self, other: "CorrectionLog") -> None:
        for e in other:
            self.append(e)

    def observations(self, keys: Sequence[str] | None = None, history: int | None = None) -> dict[str, np.ndarray]:
        """``{key: (N, history, dim)}`` of the entries (the last ``history`` steps of each)."""
        keys = tuple(keys or self.obs_keys)
        h = self.history if history is None else int(history)
        if h > self.history:
            raise ValueError(f"the log holds {self.history} observations per entry, {h} were asked for")
        missing = [k for k in keys if k not in self.obs_keys]
        if missing:
            raise KeyError(f"the corrections log has no observation {missing}; it stores {list(self.obs_keys)}")
        out = {}
        for k in keys:
            dim = self._dims.get(k, 0)
            arr = np.stack([e.obs[k] for e in self.entries]) if self.entries else np.zeros((0, self.history, dim),
                                                                                          np.float32)
            out[k] = arr[:, self.history - h:]
        return out

    # --- disk -----------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the whole log to ``path`` (``.npz``) atomically; returns the path."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"a corrections log is a .npz file, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for k in self.obs_keys:
            arrays[f"obs/{k}"] = self.observations([k])[k].astype(np.float32)
        for name in _STR_KEYS:
            values = [getattr(e, name) for e in self.entries]
            width = max([1, *(len(v) for v in values)])
            arrays[name] = np.array(values, dtype=f"<U{width}")
        arrays["episode"] = np.array([e.episode for e in self.entries], np.int64)
        arrays["step"] = np.array([e.step for e in self.entries], np.int64)
        arrays["time"] = np.array([e.time for e in self.entries], np.float64)
        arrays["group"] = np.array([e.group for e in self.entries], np.int64)
        meta = {"format": FORMAT, "version": VERSION, "obs_keys": list(self.obs_keys), "history": self.history,
                "dims": self._dims, "extra": self.metadata}
        arrays["metadata"] = np.array(json.dumps(meta, sort_keys=True, allow_nan=False))
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CorrectionLog":
        """Read a log written by :meth:`save` (``ValueError`` naming the file when it is not one)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no corrections log at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a corrections log ({exc})") from None
        try:
            meta = json.loads(str(data["metadata"]))
        except (KeyError, json.JSONDecodeError):
            raise ValueError(f"{path}: not a corrections log (no valid metadata)") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{path}: not a serl_ctrl corrections log of version {VERSION} "
                             f"(format={meta.get('format')!r}, version={meta.get('version')!r})")
        log = cls(meta["obs_keys"], int(meta["history"]), meta.get("extra") or {})
        n = len(data["instruction"])
        for name in (*_STR_KEYS, "episode", "step", "time", "group", *(f"obs/{k}" for k in log.obs_keys)):
            if name not in data or len(data[name]) != n:
                raise ValueError(f"{path}: key {name!r} is missing or has the wrong length")
        for i in range(n):
            log.append(CorrectionEntry({k: data[f"obs/{k}"][i] for k in log.obs_keys},
                                       *(str(data[s][i]) for s in _STR_KEYS),
                                       episode=int(data["episode"][i]), step=int(data["step"][i]),
                                       time=float(data["time"][i]), group=int(data["group"][i])))
        return log

    def summary(self) -> dict[str, Any]:
        """Counts per instruction and source (what ``serl-ctrl`` prints)."""
        by_instruction: dict[str, int] = {}
        by_source: dict[str, int] = {}
        groups: dict[tuple[int, int], CorrectionEntry] = {}
        for e in self.entries:
            groups.setdefault((e.group, e.episode) if e.group >= 0 else (-1, id(e)), e)
        for e in groups.values():
            by_instruction[e.instruction] = by_instruction.get(e.instruction, 0) + 1
            by_source[e.source] = by_source.get(e.source, 0) + 1
        return {"corrections": len(groups), "entries": len(self.entries), "by_instruction": by_instruction,
                "by_source": by_source, "episodes": len({e.episode for e in self.entries})}
