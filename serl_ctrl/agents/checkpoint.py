"""Checkpoint and resume for ``SACAgent`` / ``Learner``, without pickle.

A checkpoint is two files in one folder, named by step::

    ckpt_000012000.safetensors   every tensor and numpy array (networks, targets, optimizer
                                 moments, replay buffers, RNG states as byte tensors)
    ckpt_000012000.json          everything else: the structure of the state (with placeholders
                                 pointing at tensors), counters, numpy PCG64 / Python RNG states,
                                 the config, and a random checkpoint id

Both are written atomically (temporary file in the same folder, fsync, ``os.replace``; see
``serl_ctrl.utils.atomic``): tensors first, JSON last, so the JSON is the commit marker. The same
random id is stored in the safetensors header and the JSON; a mismatched pair is refused.
Loading never unpickles: ``safetensors`` reads raw tensors and ``json`` reads plain values.

Resume is exact: loading a checkpoint into a freshly built learner (same config, same buffers)
and continuing gives bit-identical updates to a run that was never interrupted.

    save_checkpoint("runs/pick/ckpt", learner)            # -> Path of the .json
    path = latest_checkpoint("runs/pick/ckpt")            # None if there is none
    load_checkpoint(path, learner)                        # restores everything, returns the meta
    cfg = read_checkpoint_config(path)                    # the SACConfig it was trained with
    weights, meta = read_actor_state(path)                # encoder + actor only (for export)
"""

from __future__ import annotations

import json
import random
import re
import uuid
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from serl_ctrl.agents.config import SACConfig

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "resume_run", "read_checkpoint_config",
           "read_actor_state", "CheckpointError"]

FORMAT = "serl_ctrl.checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.json$")
PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the object it is loaded into."""


# ---------------------------------------------------------------------- tree <-> (json, tensors)


def _flatten(obj: Any, path: str, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": path}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {path!r} (only tensors, "
                    "numpy arrays, dicts, lists, tuples and JSON scalars)")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return _LazyArray(tensors, obj["__ndarray__"])
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _global_rng_state() -> Dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": {"name": np_state[0], "key": np_state[1], "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "torch": torch.get_rng_state()}


def _set_global_rng_state(s: Mapping[str, Any]) -> None:
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n["name"], np.asarray(n["key"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(s["torch"])


def _default_step(obj: Any) -> int:
    for attr in ("env_steps", "num_updates"):
        if hasattr(obj, attr):
            return int(getattr(obj, attr))
    return 0


def _config_of(obj: Any) -> Optional[SACConfig]:
    cfg = getattr(obj, "config", None)
    return cfg if isinstance(cfg, SACConfig) else None


# ---------------------------------------------------------------------- public API


def save_checkpoint(directory: PathLike, obj: Any, *, step: Optional[int] = None,
                    keep: Optional[int] = 2, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``obj.state_dict()`` (a ``Learner`` or ``SACAgent``) plus the global Python, numpy
    and torch RNG states as ``<directory>/ckpt_<step>.{safetensors,json}``.

    ``step`` defaults to ``obj.env_steps`` (Learner) or ``obj.num_updates`` (agent). ``keep``
    older checkpoints beyond the newest ``keep`` are deleted (None keeps all). ``extra`` is
    JSON data stored alongside (e.g. the env id). Returns the path of the JSON file."""
    from safetensors.torch import save_file

    from serl_ctrl.utils.atomic import atomic_path, atomic_write_text

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    step = _default_step(obj) if step is None else int(step)
    tensors: Dict[str, torch.Tensor] = {}
    tree = _flatten(obj.state_dict(), "state", tensors)
    rng_tree = _flatten(_global_rng_state(), "rng_globals", tensors)
    ckpt_id = uuid.uuid4().hex
    cfg = _config_of(obj)
    meta = {"format": FORMAT, "version": VERSION, "id": ckpt_id, "step": step,
            "kind": type(obj).__name__, "config": cfg.to_dict() if cfg is not None else None,
            "extra": dict(extra or {}), "state": tree, "rng_globals": rng_tree}
    text = json.dumps(meta, indent=1, sort_keys=True)  # fail before writing anything
    stem = f"ckpt_{step:09d}"
    with atomic_path(d / f"{stem}.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "id": ckpt_id})
    atomic_write_text(d / f"{stem}.json", text)
    if keep is not None:
        for old in _list(d)[:-keep] if keep > 0 else []:
            for p in (old, old.with_suffix(".safetensors")):
                p.unlink(missing_ok=True)
    return d / f"{stem}.json"


def _list(d: Path) -> list:
    found = []
    for p in d.iterdir() if d.is_dir() else []:
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: PathLike) -> Optional[Path]:
    """The newest complete checkpoint (its JSON path) in ``directory``, or None."""
    d = Path(directory)
    for p in reversed(_list(d)):
        if p.with_suffix(".safetensors").exists():
            return p
    return None


def _resolve(path: PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"no checkpoint (ckpt_<step>.json) in {p}")
        return latest
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p


def _read_meta(p: Path) -> Dict[str, Any]:
    meta = json.loads(p.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{p}: not a {FORMAT} v{VERSION} file")
    return meta


def read_checkpoint_config(path: PathLike) -> SACConfig:
    """The ``SACConfig`` stored in a checkpoint (file, or folder = newest)."""
    meta = _read_meta(_resolve(path))
    if meta.get("config") is None:
        raise CheckpointError(f"{path}: checkpoint has no SAC config")
    return SACConfig.from_dict(meta["config"])


def load_checkpoint(path: PathLike, obj: Any, *, restore_global_rng: bool = True,
                    strict_config: bool = True) -> Dict[str, Any]:
    """Restore ``obj`` (built like the saved one) from a checkpoint file or folder (newest).

    ``strict_config``: refuse a checkpoint whose config differs from ``obj.config`` (the message
    lists the differing fields). Returns the JSON metadata (step, extra, config, ...).

    Numpy arrays of the saved state reach ``obj.load_state_dict`` as lazy array-likes that are
    read from disk on ``np.asarray(x)`` (torch tensors arrive as tensors)."""
    from safetensors import safe_open

    p = _resolve(path)
    meta = _read_meta(p)
    tpath = _tensor_file(p, meta)
    if meta["kind"] != type(obj).__name__:
        raise CheckpointError(f"{p}: holds a {meta['kind']}, cannot load into "
                              f"{type(obj).__name__}")
    cfg = _config_of(obj)
    if strict_config and cfg is not None and meta.get("config") is not None:
        saved, now = _with_defaults(meta["config"]), cfg.to_dict()
        diff = _diff(saved, now)
        if diff:
            raise CheckpointError(f"{p}: config differs from the object's in "
                                  + ", ".join(f"sac.{k} (saved {a!r}, now {b!r})"
                                              for k, a, b in diff)
                                  + "; pass strict_config=False to load anyway")
    # tensors are read one at a time as the state is rebuilt (a large replay buffer is then
    # held at most twice for the duration of one copy, not the whole file at once)
    with safe_open(str(tpath), framework="pt") as f:
        tensors = _LazyTensors(f)
        state = _unflatten(meta["state"], tensors)
        obj.load_state_dict(state)
        del state
        if restore_global_rng:
            _set_global_rng_state(_unflatten(meta["rng_globals"], tensors))
    return {k: v for k, v in meta.items() if k not in ("state", "rng_globals")}


def _tensor_file(p: Path, meta: Mapping[str, Any]) -> Path:
    """The ``.safetensors`` file of checkpoint ``p``, checked to belong to it (same id)."""
    from safetensors import safe_open

    tpath = p.with_suffix(".safetensors")
    if not tpath.exists():
        raise CheckpointError(f"{p}: tensor file {tpath.name} is missing")
    with safe_open(str(tpath), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("id") != meta["id"]:
        raise CheckpointError(f"{p}: {tpath.name} belongs to a different checkpoint (id "
                              f"{header.get('id')} != {meta['id']}); the pair is inconsistent")
    return tpath


def _with_defaults(saved: Mapping[str, Any]) -> Any:
    """A saved config dict with the fields added to ``SACConfig`` since it was written filled in
    with their defaults (a checkpoint from before ``sac.gripper_critic`` still resumes); as saved
    if it no longer validates (the comparison then names what differs)."""
    try:
        return SACConfig.from_dict(saved).to_dict()
    except ValueError:
        return saved


def resume_run(directory: PathLike, obj: Any, run_id: Mapping[str, Any]) -> Dict[str, Any]:
    """Load the newest checkpoint in ``directory`` into ``obj`` if it was written by the same run.

    ``run_id`` is what decides "the same run" (algorithm, step budget, seed, config ...); it was
    saved as the checkpoint's ``extra`` (``save_checkpoint(..., extra=run_id)``), and a checkpoint
    whose ``extra`` differs is refused, naming the keys that differ. The global RNGs are left alone
    (runs that resume this way draw from their own generators). Returns the metadata."""
    p = latest_checkpoint(directory)
    if p is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {directory}")
    want = json.loads(json.dumps(dict(run_id), default=str))  # tuples -> lists, as the JSON holds them
    saved = _read_meta(p).get("extra", {})
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise CheckpointError(f"{p}: written by a run with other {', '.join(diff)}; resume with the same settings, "
                              "or train into a new --out")
    return load_checkpoint(p, obj, restore_global_rng=False)


def read_actor_state(path: PathLike) -> "tuple[Dict[str, torch.Tensor], Dict[str, Any]]":
    """The deployable weights of a SAC checkpoint (file, or folder = newest): encoder and actor
    (and the grasp critic of ``sac.gripper_critic``),
    keyed as ``SACAgent.load_actor_state_dict`` takes them, plus the checkpoint's metadata (step,
    config, extra). Only those tensors are read, never the replay buffers or optimiser state, so
    exporting a policy does not need a learner built like the one that trained it."""
    from safetensors import safe_open

    p = _resolve(path)
    meta = _read_meta(p)
    tpath = _tensor_file(p, meta)
    state = meta["state"].get("agent") if meta["kind"] == "Learner" else meta["state"]
    if not isinstance(state, dict) or not all(k in state for k in ("encoder", "actor")):
        raise CheckpointError(f"{p}: a {meta['kind']} checkpoint without SAC encoder and actor weights")
    weights: Dict[str, torch.Tensor] = {}
    # with sac.gripper_critic the grasp critic picks the gripper command: it is part of the policy
    parts = ("encoder", "actor") + (("grasp_critic",) if "grasp_critic" in state else ())
    with safe_open(str(tpath), framework="pt") as f:
        tensors = _LazyTensors(f)
        for part in parts:
            for name, value in _unflatten(state[part], tensors).items():
                weights[f"{part}.{name}"] = value
    return weights, {k: v for k, v in meta.items() if k not in ("state", "rng_globals")}


class _LazyArray:
    """A numpy array read from the checkpoint when ``np.asarray`` asks for it (not before),
    so that large replay arrays are loaded and copied into their buffers one at a time."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], key: str) -> None:
        self._tensors, self._key = tensors, key

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self._tensors[self._key].numpy()
        return a if dtype is None else a.astype(dtype, copy=False)


class _LazyTensors(Mapping):
    """Read-on-access view of an open safetensors file."""

    def __init__(self, handle: Any) -> None:
        self._h = handle
        self._keys = list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._h.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _diff(a: Any, b: Any, prefix: str = "") -> list:
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if a != b:
        out.append((prefix.rstrip("."), a, b))
    return out
