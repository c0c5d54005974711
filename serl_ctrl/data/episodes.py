"""Episodes on disk: one episode = one ``.npz`` file that plain numpy can read, without pickles.

Why this format:

* **One file per episode** so that a crash loses at most the episode being written, folders
  can be merged with ``cp``, and a bad episode can be deleted by hand.
* **``np.savez_compressed``** because it is in numpy itself (no h5py / zarr dependency on
  the robot PC) and it is a plain zip of ``.npy`` files; rendered sim images compress
  7-16x (noisy real camera images much less, see the figures below).
* **No pickles, ever**: every array has a numeric, bool or fixed-width unicode dtype and
  every load uses ``allow_pickle=False``, so opening a file from someone else cannot run
  code. Strings are a fixed-width unicode array (``instruction``) and metadata is JSON text
  in a 0-d unicode array (``metadata``).
* **Strict validation on save and load**: a file that is truncated, has a missing or extra
  key, a wrong length or dtype, or an unknown ``format_version`` raises
  :class:`EpisodeFormatError` naming the file and the key. Nothing is skipped, repaired or
  partly returned: a dataset is either what it says it is, or the error tells you which file
  to look at.

The exact layout is documented in ``docs/episode_format.md``.

Time indexing: with ``T`` steps, ``observations[k][0]`` is the observation after reset and
``observations[k][t + 1]`` the one after ``actions[t]``; ``rewards[t]``, ``terminated[t]``,
``truncated[t]``, ``success[t]`` (``info["success"]``), ``intervened[t]`` and
``instructions[t]`` all belong to step ``t``. So a transition is
``(obs[t], actions[t], rewards[t], obs[t + 1], terminated[t])``.

Measured cost, 100 steps with two 128x128x3 uint8 image streams (front + wrist) plus
state keys and 4- to 7-D actions: 9.9 MB in memory. Dev machine: 2 cores, Python 3.11,
numpy 2.4, measured while other jobs kept it busy (load average ~4), so an idle machine
is faster (the simple MuJoCo scene below took 0.17 s / 0.03 s idle):

* this project's ``pickcube`` env (``obs="both"``, MuJoCo, random actions): **0.60 MB on
  disk, save 0.18 s, load (with validation) 0.03 s**;
* a simple MuJoCo table scene (``mujoco.Renderer``): 1.5 MB, save 0.34 s, load 0.05 s;
* those frames plus camera-like sensor noise (sigma = 2 grey levels), as a real camera
  would give: 6.3 MB, save 0.85 s, load 0.12 s. zlib finds little to compress in noisy
  pixels; if real-robot datasets grow too large, per-frame PNG/JPEG would be the next
  format version, not a change to this one;
* pure noise (incompressible worst case): 9.9 MB, save 0.45 s, load 0.02 s.

Saving is dominated by zlib at its default level: fast enough to run between episodes at
10 Hz control. Loading decompresses the whole episode into memory: training loads
episodes into a replay buffer anyway, and :func:`summarize` / :func:`iter_episodes` hold
one episode at a time. ``tests/test_episodes.py::test_write_read_time_100_steps`` repeats
the measurement (with synthetic frames) and prints it.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

from serl_ctrl.utils.atomic import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_METADATA",
    "Episode",
    "EpisodeFormatError",
    "EpisodeRecorder",
    "episode_path",
    "iter_episodes",
    "list_episodes",
    "load_episode",
    "load_episodes",
    "make_metadata",
    "save_episode",
    "summarize",
    "write_episodes_dir",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The on-disk format written by this module. Loading any other version is an error: a
#: newer file may mean something different, and guessing would corrupt a dataset silently.
FORMAT_VERSION = 1

#: Metadata keys every episode must carry, with what they hold. Extra JSON keys are allowed.
REQUIRED_METADATA: dict[str, str] = {
    "format_version": "int, the on-disk format version (1)",
    "task": "str, e.g. 'pickcube'",
    "backend": "str, e.g. 'mujoco', 'pybullet', 'ros'",
    "obs_mode": "str, the env's observation mode, e.g. 'state', 'pixels', 'both'",
    "seed": "int or null, the env seed of this episode",
    "control_hz": "number > 0, control rate of the env step",
    "action_low": "list of A finite numbers, lower action bound",
    "action_high": "list of A finite numbers, upper action bound",
    "created": "str, ISO 8601 time the episode was recorded",
    "serl_ctrl_version": "str, serl_ctrl.__version__ of the writer",
}

# Top-level keys of a format-1 file besides the "obs/<key>" entries.
_STEP_KEYS = ("action", "reward", "terminated", "truncated", "success", "intervened", "instruction")
_OBS_PREFIX = "obs/"
_EPISODE_NAME = re.compile(r"^episode_(\d{6,})\.npz$")


class EpisodeFormatError(ValueError):
    """An episode (in memory or on disk) does not follow the format; the message names
    the file (or "episode" for one in memory) and the offending key."""


# --------------------------------------------------------------------------------------
# The in-memory episode


@dataclass(eq=False)
class Episode:
    """One recorded episode of ``T`` steps (see the module docstring for time indexing).

    ``intervened`` defaults to all False (no human intervention). Fields are plain numpy
    arrays and may be modified; :meth:`validate` (called by :func:`save_episode`) checks
    them. ``==`` is identity (``eq=False``): comparing arrays field by field is the
    caller's choice of tolerance.
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    instructions: list[str]
    intervened: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.intervened is None:
            n = len(self.actions) if hasattr(self.actions, "__len__") else 0
            self.intervened = np.zeros(n, dtype=bool)

    @property
    def length(self) -> int:
        """Number of steps ``T`` (observations hold ``T + 1`` entries)."""
        return int(len(self.actions))

    @property
    def is_success(self) -> bool:
        """True if ``info["success"]`` was true after any step."""
        return bool(np.any(self.success))

    @property
    def total_reward(self) -> float:
        """Undiscounted return, summed in float64 so long episodes do not lose precision."""
        return float(np.sum(self.rewards, dtype=np.float64))

    @property
    def image_keys(self) -> list[str]:
        """Observation keys holding RGB images: uint8 arrays shaped (T+1, H, W, 3)."""
        return [k for k, v in self.observations.items() if _is_image(v)]

    def validate(self) -> None:
        """Raise :class:`EpisodeFormatError` if the episode could not be saved as is."""
        _validate_episode(self, "episode", _field_name)


def _is_image(v: np.ndarray) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] == 3


# --------------------------------------------------------------------------------------
# Validation, shared by save (names: dataclass fields) and load (names: file keys)

_FIELD_TO_KEY = {
    "observations": "obs/*",
    "actions": "action",
    "rewards": "reward",
    "terminated": "terminated",
    "truncated": "truncated",
    "success": "success",
    "intervened": "intervened",
    "instructions": "instruction",
    "metadata": "metadata",
}


def _field_name(fld: str, obs_key: str | None = None) -> str:
    return f"observations[{obs_key!r}]" if obs_key is not None else fld


def _file_key(fld: str, obs_key: str | None = None) -> str:
    return f"{_OBS_PREFIX}{obs_key}" if obs_key is not None else _FIELD_TO_KEY[fld]


def _fail(where: str, name: str, msg: str) -> EpisodeFormatError:
    return EpisodeFormatError(f"{where}: {name!s}: {msg}")


def _validate_metadata(md: Any, where: str, name: str, n_actions: int | None) -> None:
    """Check JSON-safety (exact round trip) and the required keys with their types."""
    if not isinstance(md, dict):
        raise _fail(where, name, f"must be a dict, got {type(md).__name__}")
    _check_json_value(md, where, name)
    missing = [k for k in REQUIRED_METADATA if k not in md]
    if missing:
        raise _fail(
            where,
            name,
            f"missing required key(s) {missing}; use make_metadata(...) to build metadata "
            f"(required: {', '.join(REQUIRED_METADATA)})",
        )
    fv = md["format_version"]
    if type(fv) is not int:
        raise _fail(where, f"{name}['format_version']", f"must be an int, got {fv!r}")
    if fv != FORMAT_VERSION:
        raise _fail(
            where,
            f"{name}['format_version']",
            f"unknown format_version {fv}; this serl_ctrl reads format {FORMAT_VERSION} only",
        )
    for k in ("task", "backend", "obs_mode", "created", "serl_ctrl_version"):
        if not isinstance(md[k], str) or not md[k]:
            raise _fail(where, f"{name}[{k!r}]", f"must be a non-empty string, got {md[k]!r}")
    try:
        datetime.fromisoformat(md["created"])
    except ValueError:
        raise _fail(where, f"{name}['created']", f"not an ISO 8601 time: {md['created']!r}") from None
    if md["seed"] is not None and type(md["seed"]) is not int:
        raise _fail(where, f"{name}['seed']", f"must be an int or null, got {md['seed']!r}")
    hz = md["control_hz"]
    if isinstance(hz, bool) or not isinstance(hz, (int, float)) or not hz > 0:
        raise _fail(where, f"{name}['control_hz']", f"must be a number > 0, got {hz!r}")
    bounds = {}
    for k in ("action_low", "action_high"):
        b = md[k]
        if not isinstance(b, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in b
        ):
            raise _fail(where, f"{name}[{k!r}]", f"must be a list of numbers, got {b!r}")
        if n_actions is not None and len(b) != n_actions:
            raise _fail(
                where,
                f"{name}[{k!r}]",
                f"has {len(b)} entries but actions have dimension {n_actions}",
            )
        bounds[k] = b
    for i, (lo, hi) in enumerate(zip(bounds["action_low"], bounds["action_high"])):
        if lo > hi:
            raise _fail(where, f"{name}['action_low']", f"entry {i}: low {lo} > high {hi}")


def _check_json_value(v: Any, where: str, name: str) -> None:
    """Allow only values that survive ``json.loads(json.dumps(v)) == v`` exactly.

    Rejecting tuples, numpy scalars, non-string keys and NaN/inf (instead of converting
    them) keeps the promise that a loaded episode equals the saved one.
    """
    if v is None or isinstance(v, (bool, str)):
        return
    if isinstance(v, int) and type(v) is int:
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _fail(where, name, f"{v!r} is not valid JSON; use null or a finite number")
        return
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_json_value(x, where, f"{name}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise _fail(where, name, f"key {k!r} is not a string (JSON keys are strings)")
            _check_json_value(x, where, f"{name}[{k!r}]")
        return
    hint = ""
    if isinstance(v, tuple):
        hint = "; use a list"
    elif isinstance(v, (np.ndarray, np.generic)):
        hint = "; convert with .tolist() / .item()"
    raise _fail(where, name, f"{type(v).__name__} is not JSON-serialisable{hint}")


def _validate_episode(ep: Episode, where: str, name_of: Callable[..., str]) -> None:
    """Check every field of ``ep``; ``name_of(field, obs_key=None)`` names it in errors."""
    acts = ep.actions
    if not isinstance(acts, np.ndarray):
        raise _fail(where, name_of("actions"), f"must be a numpy array, got {type(acts).__name__}")
    if acts.ndim != 2:
        raise _fail(where, name_of("actions"), f"must be 2-D (T, A), got shape {acts.shape}")
    if acts.dtype != np.float32:
        raise _fail(
            where, name_of("actions"), f"must be float32, got {acts.dtype} (use .astype(np.float32))"
        )
    T, A = acts.shape
    if T == 0:
        raise _fail(where, name_of("actions"), "episode has no steps (T = 0)")
    if A == 0:
        raise _fail(where, name_of("actions"), "action dimension is 0")
    if not np.all(np.isfinite(acts)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(acts))[0])
        raise _fail(where, name_of("actions"), f"non-finite value {acts[bad]} at index {bad}")

    for fld, dtype in (
        ("rewards", np.float32),
        ("terminated", np.bool_),
        ("truncated", np.bool_),
        ("success", np.bool_),
        ("intervened", np.bool_),
    ):
        a = getattr(ep, fld)
        if not isinstance(a, np.ndarray):
            raise _fail(where, name_of(fld), f"must be a numpy array, got {type(a).__name__}")
        if a.shape != (T,):
            raise _fail(where, name_of(fld), f"expected shape (T,) = ({T},), got {a.shape}")
        if a.dtype != dtype:
            raise _fail(where, name_of(fld), f"must be {np.dtype(dtype)}, got {a.dtype}")
    if not np.all(np.isfinite(ep.rewards)):
        i = int(np.argwhere(~np.isfinite(ep.rewards))[0, 0])
        raise _fail(where, name_of("rewards"), f"non-finite reward {ep.rewards[i]} at step {i}")

    ins = ep.instructions
    if not isinstance(ins, list):
        raise _fail(where, name_of("instructions"), f"must be a list of str, got {type(ins).__name__}")
    if len(ins) != T:
        raise _fail(where, name_of("instructions"), f"expected {T} entries (one per step), got {len(ins)}")
    for i, s in enumerate(ins):
        if not isinstance(s, str):
            raise _fail(where, name_of("instructions"), f"entry {i} is {type(s).__name__}, not str")
        if "\x00" in s:
            # numpy's fixed-width unicode strips trailing NULs: the text would not round trip.
            raise _fail(where, name_of("instructions"), f"entry {i} contains a NUL character")

    obs = ep.observations
    if not isinstance(obs, dict) or not obs:
        raise _fail(where, name_of("observations"), "must be a non-empty dict of arrays")
    for k, v in obs.items():
        if not isinstance(k, str) or not k:
            raise _fail(where, name_of("observations"), f"key {k!r} must be a non-empty string")
        nm = name_of("observations", k)
        if not isinstance(v, np.ndarray):
            raise _fail(where, nm, f"must be a numpy array, got {type(v).__name__}")
        if v.ndim == 0 or v.shape[0] != T + 1:
            raise _fail(where, nm, f"expected T + 1 = {T + 1} entries along axis 0, got shape {v.shape}")
        if v.dtype.kind not in "biufc":
            raise _fail(where, nm, f"dtype {v.dtype} is not numeric or bool")
        if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(v))[0])
            raise _fail(where, nm, f"non-finite value at index {idx}")

    _validate_metadata(ep.metadata, where, name_of("metadata"), A)


# --------------------------------------------------------------------------------------
# Metadata


def make_metadata(
    *,
    task: str,
    backend: str,
    obs_mode: str,
    seed: int | None,
    control_hz: float,
    action_low: Sequence[float] | np.ndarray,
    action_high: Sequence[float] | np.ndarray,
    **extra: Any,
) -> dict[str, Any]:
    """Build episode metadata with the required keys; fills ``format_version``, ``created``
    (now, UTC) and ``serl_ctrl_version``. ``extra`` keys (JSON values) are kept as given.

    Bounds may be numpy arrays (e.g. ``env.action_space.low``): they are converted to
    lists of Python floats here so the result is exact JSON.
    """
    from serl_ctrl import __version__

    md: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "backend": backend,
        "obs_mode": obs_mode,
        "seed": int(seed) if isinstance(seed, np.integer) else seed,
        "control_hz": float(control_hz),
        "action_low": [float(x) for x in np.asarray(action_low, dtype=np.float64).reshape(-1)],
        "action_high": [float(x) for x in np.asarray(action_high, dtype=np.float64).reshape(-1)],
        "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "serl_ctrl_version": __version__,
    }
    clash = sorted(set(extra) & set(md))
    if clash:
        raise ValueError(f"make_metadata: {clash} are set by make_metadata itself")
    md.update(extra)
    _validate_metadata(md, "make_metadata", "metadata", None)
    return md


# --------------------------------------------------------------------------------------
# Save / load


def save_episode(path: PathLike, episode: Episode) -> Path:
    """Validate ``episode`` and write it to ``path`` (must end in ``.npz``) atomically.

    Raises :class:`EpisodeFormatError` (before anything is written) if the episode is
    invalid; an existing file at ``path`` is replaced only once the new one is complete.
    Returns the path written.
    """
    path = Path(os.fspath(path))
    where = f"cannot save episode to {path}"
    if path.suffix != ".npz":
        raise EpisodeFormatError(f"{where}: file name must end in .npz")
    _validate_episode(episode, where, _field_name)

    arrays: dict[str, np.ndarray] = {}
    for k, v in episode.observations.items():
        arrays[_OBS_PREFIX + k] = v
    arrays["action"] = episode.actions
    arrays["reward"] = episode.rewards
    arrays["terminated"] = episode.terminated
    arrays["truncated"] = episode.truncated
    arrays["success"] = episode.success
    arrays["intervened"] = episode.intervened  # type: ignore[assignment]
    # Fixed-width unicode ('<U{n}'), never object dtype: readable without pickle.
    width = max(1, max(len(s) for s in episode.instructions))
    arrays["instruction"] = np.array(episode.instructions, dtype=f"<U{width}")
    text = json.dumps(episode.metadata, allow_nan=False, ensure_ascii=False, sort_keys=True)
    arrays["metadata"] = np.array(text, dtype=f"<U{max(1, len(text))}")

    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


# What zipfile / zlib / numpy raise on a truncated or corrupt archive or member. OSError
# covers read errors once the file is open (a missing file fails earlier, in open());
# RuntimeError / NotImplementedError: encrypted members or unsupported compression.
_CORRUPT_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    ValueError,
    KeyError,
    OSError,
    struct.error,
    UnicodeDecodeError,
    RuntimeError,
    NotImplementedError,
)


def _read_members(path: Path, where: str) -> dict[str, np.ndarray]:
    """Read every ``<key>.npy`` member of the archive, each checked against its CRC.

    Done with ``zipfile`` + ``np.lib.format.read_array`` rather than ``np.load``'s lazy
    ``NpzFile``: ``NpzFile`` reads exactly the array's bytes and relies on zipfile's
    read-ahead reaching the end of the member for the CRC check (it did in every case we
    tried, but that is incidental). Here one extra byte is read after each array, which
    makes the end-of-member CRC check certain and catches trailing garbage, so a flipped
    bit never comes back as wrong data. It also lets us reject non-``.npy`` and duplicate
    members, which ``NpzFile`` would hide.
    """
    raw: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except _CORRUPT_ERRORS as e:
            raise _fail(where, "<file>", f"not a readable .npz (zip) archive ({type(e).__name__}: {e})") from e
        with zf:
            for info in zf.infolist():
                name = info.filename
                if not name.endswith(".npy"):
                    raise _fail(where, name, "unexpected archive member (every member is <key>.npy)")
                key = name[: -len(".npy")]
                if key in raw:
                    raise _fail(where, key, "appears twice in the archive")
                try:
                    with zf.open(info) as member:
                        arr = np.lib.format.read_array(member, allow_pickle=False)
                        if member.read(1):
                            raise ValueError("trailing bytes after the array")
                except _CORRUPT_ERRORS as e:
                    raise _fail(where, key, f"unreadable or corrupt ({type(e).__name__}: {e})") from e
                raw[key] = arr
    return raw


def load_episode(path: PathLike) -> Episode:
    """Read and fully validate one episode file.

    Every problem (not a zip, truncated, corrupt member, pickled/object data, missing or
    unexpected key, wrong dtype or length, bad metadata, unknown ``format_version``)
    raises :class:`EpisodeFormatError` naming ``path`` and the key. A missing file raises
    ``FileNotFoundError``. All arrays are read eagerly and checked before returning, so a
    partially read episode is never returned.
    """
    path = Path(os.fspath(path))
    where = str(path)
    raw = _read_members(path, where)

    # Keys: exactly the format-1 set plus at least one obs/<key>.
    obs_keys = [k for k in raw if k.startswith(_OBS_PREFIX)]
    for k in (*_STEP_KEYS, "metadata"):
        if k not in raw:
            raise _fail(where, k, "missing key")
    unknown = sorted(set(raw) - set(_STEP_KEYS) - {"metadata"} - set(obs_keys))
    if unknown:
        raise _fail(where, unknown[0], f"unexpected key(s) {unknown} (not in format {FORMAT_VERSION})")
    if not obs_keys:
        raise _fail(where, "obs/*", "no observation keys")
    for k in obs_keys:
        if k == _OBS_PREFIX:
            raise _fail(where, k, "empty observation key name")

    # Metadata first: format_version decides how to read everything else.
    md_arr = raw["metadata"]
    if md_arr.dtype.kind != "U" or md_arr.shape != ():
        raise _fail(where, "metadata", f"must be a 0-d unicode array, got dtype {md_arr.dtype} shape {md_arr.shape}")
    try:
        metadata = json.loads(str(md_arr.item()))
    except ValueError as e:
        raise _fail(where, "metadata", f"not valid JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise _fail(where, "metadata", f"must be a JSON object, got {type(metadata).__name__}")
    if "format_version" not in metadata:
        raise _fail(where, "metadata['format_version']", "missing")
    if metadata["format_version"] != FORMAT_VERSION:
        raise _fail(
            where,
            "metadata['format_version']",
            f"unknown format_version {metadata['format_version']!r}; "
            f"this serl_ctrl reads format {FORMAT_VERSION} only",
        )

    ins = raw["instruction"]
    if ins.dtype.kind != "U" or ins.ndim != 1:
        raise _fail(where, "instruction", f"must be a 1-D unicode array, got dtype {ins.dtype} shape {ins.shape}")

    ep = Episode(
        observations={k[len(_OBS_PREFIX):]: raw[k] for k in obs_keys},
        actions=raw["action"],
        rewards=raw["reward"],
        terminated=raw["terminated"],
        truncated=raw["truncated"],
        success=raw["success"],
        instructions=[str(s) for s in ins.tolist()],
        intervened=raw["intervened"],
        metadata=metadata,
    )
    _validate_episode(ep, where, _file_key)
    return ep


# --------------------------------------------------------------------------------------
# Recording


class EpisodeRecorder:
    """Build an :class:`Episode` step by step while an env runs.

    ::

        rec = EpisodeRecorder(make_metadata(task="pick", ...))
        obs, info = env.reset(seed=0)
        rec.reset(obs)
        while True:
            action = policy(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            rec.step(action, obs, reward, terminated, truncated, info, instruction="pick the cube")
            if terminated or truncated:
                break
        save_episode("demos/episode_000000.npz", rec.finish())

    Every observation array and the action are *copied*: envs and wrappers often return
    the same buffer each step, and keeping references would record the last frame T+1
    times. Inputs are checked at each step (same keys, shapes and dtypes as the reset
    observation; finite action and reward; ``info["success"]`` present) so that an error
    names the step that caused it rather than surfacing at save time.

    Record the action that was actually executed (under a human intervention, the
    human's action) and pass ``info["intervened"] = True`` for those steps.
    """

    def __init__(self, metadata: Mapping[str, Any]):
        md = dict(metadata)
        # Fail at construction, not after an hour of teleoperation, if metadata is bad.
        _validate_metadata(md, "EpisodeRecorder", "metadata", None)
        # A JSON round trip is a deep copy that the caller cannot mutate afterwards.
        self._metadata: dict[str, Any] = json.loads(json.dumps(md))
        self._obs: list[dict[str, np.ndarray]] | None = None
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._clear()

    def _clear(self) -> None:
        self._obs = None
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._terminated: list[bool] = []
        self._truncated: list[bool] = []
        self._success: list[bool] = []
        self._intervened: list[bool] = []
        self._instructions: list[str] = []
        self._done = False

    @property
    def in_progress(self) -> bool:
        """True between :meth:`reset` and :meth:`finish` / :meth:`discard`."""
        return self._obs is not None

    @property
    def num_steps(self) -> int:
        return len(self._actions)

    def _copy_obs(self, obs: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
        if not isinstance(obs, Mapping):
            raise TypeError(f"{where}: observation must be a dict of arrays, got {type(obs).__name__}")
        out = {}
        for k, v in obs.items():
            a = np.array(v)  # np.array copies by default (numpy 1.x and 2.x)
            if a.dtype.kind not in "biufc":
                raise ValueError(f"{where}: observation {k!r} has non-numeric dtype {a.dtype}")
            out[k] = a
        return out

    def reset(self, obs: Mapping[str, Any]) -> None:
        """Start an episode with the observation returned by ``env.reset``.

        Raises ``RuntimeError`` if an episode is in progress: call :meth:`finish` or
        :meth:`discard` first, so that recorded steps are never dropped by accident.
        """
        if self._obs is not None:
            raise RuntimeError(
                f"EpisodeRecorder.reset: an episode with {self.num_steps} step(s) is in progress; "
                "call finish() or discard() first"
            )
        first = self._copy_obs(obs, "EpisodeRecorder.reset")
        if not first:
            raise ValueError("EpisodeRecorder.reset: observation dict is empty")
        self._clear()
        self._spec = {k: (v.shape, v.dtype) for k, v in first.items()}
        self._obs = [first]

    def step(
        self,
        action: Any,
        obs: Mapping[str, Any],
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Mapping[str, Any],
        instruction: str = "",
    ) -> None:
        """Record one ``env.step``: the action taken and what the env returned."""
        if self._obs is None:
            raise RuntimeError("EpisodeRecorder.step: call reset(obs) first")
        t = self.num_steps
        where = f"EpisodeRecorder.step (step {t})"
        if self._done:
            raise RuntimeError(f"{where}: the episode already ended (terminated or truncated); call finish()")

        a = np.array(action, dtype=np.float32)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{where}: action must be a 1-D array, got shape {a.shape}")
        if self._actions and a.shape != self._actions[0].shape:
            raise ValueError(f"{where}: action shape {a.shape} differs from step 0 {self._actions[0].shape}")
        if a.shape[0] != len(self._metadata["action_low"]):
            raise ValueError(
                f"{where}: action has {a.shape[0]} entries but metadata['action_low'] has "
                f"{len(self._metadata['action_low'])}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where}: action has non-finite values {a}")

        o = self._copy_obs(obs, where)
        if set(o) != set(self._spec):
            raise ValueError(
                f"{where}: observation keys {sorted(o)} differ from the reset observation {sorted(self._spec)}"
            )
        for k, v in o.items():
            shape, dtype = self._spec[k]
            if v.shape != shape or v.dtype != dtype:
                raise ValueError(
                    f"{where}: observation {k!r} is {v.dtype}{list(v.shape)}, "
                    f"but was {dtype}{list(shape)} after reset"
                )

        r = _as_float(reward, where, "reward")
        if not math.isfinite(r):
            raise ValueError(f"{where}: reward {r} is not finite")
        if "success" not in info:
            raise ValueError(f"{where}: info has no 'success' key; the env must report info['success'] every step")
        success = _as_bool(info["success"], where, "info['success']")
        intervened = _as_bool(info.get("intervened", False), where, "info['intervened']")
        term = _as_bool(terminated, where, "terminated")
        trunc = _as_bool(truncated, where, "truncated")
        if not isinstance(instruction, str):
            raise TypeError(f"{where}: instruction must be a str, got {type(instruction).__name__}")
        if "\x00" in instruction:
            raise ValueError(f"{where}: instruction contains a NUL character")

        self._actions.append(a)
        self._obs.append(o)
        self._rewards.append(r)
        self._terminated.append(term)
        self._truncated.append(trunc)
        self._success.append(success)
        self._intervened.append(intervened)
        self._instructions.append(instruction)
        self._done = term or trunc

    def discard(self) -> None:
        """Drop the episode in progress (e.g. the operator aborted it)."""
        self._clear()

    def finish(self) -> Episode:
        """Return the recorded episode (validated) and get ready for the next ``reset``."""
        if self._obs is None:
            raise RuntimeError("EpisodeRecorder.finish: no episode in progress (call reset first)")
        if not self._actions:
            raise RuntimeError("EpisodeRecorder.finish: the episode has no steps")
        ep = Episode(
            observations={k: np.stack([o[k] for o in self._obs]) for k in self._spec},
            actions=np.stack(self._actions),
            rewards=np.asarray(self._rewards, dtype=np.float32),
            terminated=np.asarray(self._terminated, dtype=bool),
            truncated=np.asarray(self._truncated, dtype=bool),
            success=np.asarray(self._success, dtype=bool),
            instructions=list(self._instructions),
            intervened=np.asarray(self._intervened, dtype=bool),
            metadata=json.loads(json.dumps(self._metadata)),
        )
        ep.validate()
        self._clear()
        return ep


def _as_bool(x: Any, where: str, name: str) -> bool:
    """Accept Python and numpy bools only: ``bool("False")`` is True, so coercing is unsafe."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.ndarray) and x.shape == () and x.dtype == np.bool_:
        return bool(x)
    raise TypeError(f"{where}: {name} must be a bool, got {type(x).__name__} {x!r}")


def _as_float(x: Any, where: str, name: str) -> float:
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be a number, got bool")
    try:
        return float(np.asarray(x, dtype=np.float64).item())
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number, got {type(x).__name__} {x!r}") from None


# --------------------------------------------------------------------------------------
# Folders of episodes


def episode_path(directory: PathLike, index: int) -> Path:
    """``<directory>/episode_<index:06d>.npz``: zero-padded so that name order is index order."""
    if index < 0:
        raise ValueError(f"episode index must be >= 0, got {index}")
    return Path(os.fspath(directory)) / f"episode_{index:06d}.npz"


def list_episodes(directory: PathLike) -> list[Path]:
    """All ``*.npz`` files in ``directory`` (not recursive), sorted by name.

    Hidden files (name starting with ``.``) are not episodes: they are the temporary files
    of writes in progress or interrupted (see :mod:`serl_ctrl.utils.atomic`). Everything
    else ending in ``.npz`` is listed, so a stray file is reported by :func:`load_episodes`
    rather than ignored. Raises ``FileNotFoundError`` if the folder does not exist.
    """
    d = Path(os.fspath(directory))
    if not d.is_dir():
        raise FileNotFoundError(f"episode folder {d} does not exist" if not d.exists() else f"{d} is not a folder")
    return sorted(p for p in d.iterdir() if p.suffix == ".npz" and not p.name.startswith(".") and p.is_file())


def _next_index(d: Path) -> int:
    idx = [int(m.group(1)) for p in d.iterdir() if (m := _EPISODE_NAME.match(p.name))]
    return max(idx) + 1 if idx else 0


def write_episodes_dir(directory: PathLike, episodes: Iterable[Episode]) -> list[Path]:
    """Save episodes as ``episode_000000.npz``, ``episode_000001.npz`` ... in ``directory``.

    The folder is created if needed. Numbering continues after the highest existing
    ``episode_NNNNNN.npz`` so that collecting in several sessions appends instead of
    overwriting; an existing file is never replaced. Assumes one writer per folder.
    Returns the paths written, in order. ``episodes`` may be a generator (each episode is
    written as soon as it is produced).
    """
    d = Path(os.fspath(directory))
    d.mkdir(parents=True, exist_ok=True)
    index = _next_index(d)
    written = []
    for ep in episodes:
        p = episode_path(d, index)
        if p.exists():
            raise FileExistsError(f"{p} already exists (another writer in {d}?)")
        save_episode(p, ep)
        written.append(p)
        index += 1
    return written


def load_episodes(directory: PathLike) -> list[Episode]:
    """Load every episode in ``directory`` (order of :func:`list_episodes`).

    A corrupt or invalid file raises :class:`EpisodeFormatError` naming it: a dataset is
    never loaded with episodes quietly missing. Raises ``FileNotFoundError`` if the folder
    is missing or holds no episodes.
    """
    paths = list_episodes(directory)
    if not paths:
        raise FileNotFoundError(f"no episodes (*.npz) in {Path(os.fspath(directory))}")
    return [load_episode(p) for p in paths]


def iter_episodes(directory: PathLike) -> Iterator[tuple[Path, Episode]]:
    """Like :func:`load_episodes` but one episode in memory at a time."""
    paths = list_episodes(directory)
    if not paths:
        raise FileNotFoundError(f"no episodes (*.npz) in {Path(os.fspath(directory))}")
    for p in paths:
        yield p, load_episode(p)


def summarize(directory: PathLike) -> dict[str, Any]:
    """A JSON-serialisable summary of a folder of episodes (every file is validated).

    Keys: ``n_episodes``, ``n_steps``, ``success_rate``, ``mean_length``, ``min_length``,
    ``max_length``, ``mean_return``, ``intervention_rate`` (fraction of steps),
    ``obs`` ({key: {"shape": per-step shape, "dtype": str}}), ``action_dim``,
    ``instructions`` (sorted distinct labels, ``""`` included if any step is unlabelled),
    ``tasks`` (sorted distinct ``metadata["task"]``).

    All episodes in one folder must share the observation layout and action dimension
    (a replay buffer needs that); a mismatch raises :class:`EpisodeFormatError` naming
    both files.
    """
    n = n_steps = n_success = n_interv = 0
    lengths: list[int] = []
    returns: list[float] = []
    instructions: set[str] = set()
    tasks: set[str] = set()
    layout: dict[str, tuple[tuple[int, ...], str]] | None = None
    action_dim: int | None = None
    first: Path | None = None
    for p, ep in iter_episodes(directory):
        lay = {k: (tuple(v.shape[1:]), str(v.dtype)) for k, v in ep.observations.items()}
        if layout is None:
            layout, action_dim, first = lay, ep.actions.shape[1], p
        else:
            if lay != layout:
                raise EpisodeFormatError(
                    f"{p}: obs: layout {lay} differs from {first}: {layout}; "
                    "one folder must hold one observation layout"
                )
            if ep.actions.shape[1] != action_dim:
                raise EpisodeFormatError(
                    f"{p}: action: dimension {ep.actions.shape[1]} differs from {first}: {action_dim}"
                )
        n += 1
        n_steps += ep.length
        n_success += ep.is_success
        n_interv += int(np.sum(ep.intervened))
        lengths.append(ep.length)
        returns.append(ep.total_reward)
        instructions.update(ep.instructions)
        tasks.add(ep.metadata["task"])
    assert layout is not None
    return {
        "n_episodes": n,
        "n_steps": n_steps,
        "success_rate": n_success / n,
        "mean_length": float(np.mean(lengths)),
        "min_length": int(min(lengths)),
        "max_length": int(max(lengths)),
        "mean_return": float(np.mean(returns)),
        "intervention_rate": n_interv / n_steps,
        "obs": {k: {"shape": list(s), "dtype": dt} for k, (s, dt) in layout.items()},
        "action_dim": action_dim,
        "instructions": sorted(instructions),
        "tasks": sorted(tasks),
    }
