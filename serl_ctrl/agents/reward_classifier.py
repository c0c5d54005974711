"""A learned reward: a binary success classifier on camera frames (SERL / HIL-SERL).

On a real robot nothing measures success for you. SERL's answer: record episodes, label each
frame success or failure, train a small binary classifier on the images with binary cross-entropy,
and let its thresholded probability be the sparse reward (1 on predicted success; the episode ends
there). This module trains and loads such a classifier; :class:`~serl_ctrl.envs.wrappers.
RewardModelWrapper` puts it into an environment, and ``RunConfig.reward_classifier`` (``serl-ctrl
train --reward-classifier DIR``) trains SAC with it::

    cfg = RewardClassifierConfig(keys=("front", "wrist"), steps=2000)
    report = train_reward_classifier(cfg, ["runs/rc_episodes"], "runs/rc")   # metrics, files written
    classifier = load_reward_classifier("runs/rc")                           # obs dict -> probability
    p = classifier(obs)

Data. Episodes (``docs/episode_format.md``) hold ``T + 1`` observations and ``success[t] =
info["success"]`` after step ``t``; so observation ``t + 1`` is labelled ``success[t]`` and the
reset frame (observation 0) is a negative (:func:`frames_from_episodes`). Failed episodes
(``serl-ctrl demos --keep-failures --noise ...``) give hard negatives. Recording with
``--reward dense`` keeps episodes running after success (no termination at the first success
frame), so successful episodes hold many positive frames, not one each.

Training. The model is :class:`~serl_ctrl.nn.encoders.ObservationEncoder` (one DrQ conv encoder per
camera, plus the normalised state when state keys are chosen) and an MLP head giving one logit.
Positives are usually rare, so minibatches are drawn with weights that make both classes equally
likely; images get DrQ's random shift. Whole episodes (not frames: neighbouring frames are nearly
identical) are held out for validation, both outcomes represented where possible, and the
accuracy, precision, recall and false-positive rate at threshold 0.5 on them are reported along with
the accuracy of always answering the majority class, the baseline to beat.

Files (written atomically, weights first, JSON last; the same random id is in both, so a
mismatched pair is refused; nothing is pickled)::

    OUT/model.safetensors     the weights (encoder, state normaliser statistics, head)
    OUT/classifier.json       format, config, keys, shapes, dtypes, threshold, metrics, data summary
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serl_ctrl.agents.config import (ConfigError, EncoderConfig, _coerce, _f, _from_dict, _range_text, _to_dict,
                                     apply_overrides)
from serl_ctrl.data.episodes import Episode, list_episodes, load_episode
from serl_ctrl.data.replay import ObsSpec
from serl_ctrl.nn.encoders import ObservationEncoder, random_shift
from serl_ctrl.nn.mlp import MLP

__all__ = ["RewardClassifierConfig", "RewardClassifier", "Frames", "frames_from_episodes",
           "train_reward_classifier", "load_reward_classifier", "LoadedRewardClassifier",
           "classification_metrics", "FORMAT", "WEIGHTS_NAME", "META_NAME"]

FORMAT = "serl_ctrl.reward_classifier"
VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "classifier.json"
THRESHOLD = 0.5
PathLike = Union[str, "os.PathLike[str]"]
_P = "classifier"  # prefix of field names in errors


# ---------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RewardClassifierConfig:
    """Settings of one classifier training run; every error names the field (``classifier.lr``)."""

    keys: Optional[Tuple[str, ...]] = _f(None, "observation keys the classifier sees (image and/or "
                                         "state keys); None = every image key of the episodes, or "
                                         "every state key if they hold no images")
    lr: float = _f(3e-4, "Adam learning rate", lo=0.0, hi=1.0, lo_open=True)
    batch_size: int = _f(64, "frames per minibatch (half positives on average: weighted sampling)",
                         lo=2, hi=65536)
    steps: int = _f(1000, "gradient steps", lo=1, hi=10**8)
    augment_pad: int = _f(4, "DrQ random shift of the training images: replicate-pad by this many "
                          "pixels and crop back (0 = none; encoder.augment_pad is not used)", lo=0, hi=64)
    encoder: EncoderConfig = _f(EncoderConfig, "image encoder (as sac.encoder)", factory=True)
    hidden_dims: Tuple[int, ...] = _f((256, 256), "hidden layer sizes of the MLP head")
    val_fraction: float = _f(0.2, "share of the EPISODES held out for validation (0 = none)",
                             lo=0.0, hi=0.9)
    seed: int = _f(0, "seed of the weights, the split, the sampling and the augmentation",
                   lo=0, hi=2**32 - 1)

    def __post_init__(self) -> None:
        if self.keys is not None:
            ok = (isinstance(self.keys, tuple) and len(self.keys) > 0
                  and all(isinstance(k, str) and k.strip() == k and k for k in self.keys))
            if not ok:
                raise ConfigError(f"{_P}.keys: expected a non-empty list of observation key names "
                                  f"(e.g. front,wrist), got {self.keys!r}")
            dup = sorted({k for k in self.keys if self.keys.count(k) > 1})
            if dup:
                raise ConfigError(f"{_P}.keys: {', '.join(dup)} named twice")
        if not isinstance(self.encoder, EncoderConfig):
            raise ConfigError(f"{_P}.encoder: expected EncoderConfig, got {type(self.encoder).__name__}")
        hd = self.hidden_dims
        if not (isinstance(hd, tuple) and hd and all(isinstance(v, int) and not isinstance(v, bool)
                                                     and v > 0 for v in hd)):
            raise ConfigError(f"{_P}.hidden_dims: expected a non-empty list of positive integers, got {hd!r}")
        for f in fields(self):
            if f.name in ("keys", "encoder", "hidden_dims"):
                continue
            value, meta, name = getattr(self, f.name), f.metadata, f"{_P}.{f.name}"
            kind = int if isinstance(f.default, int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (kind is int and not isinstance(value, int)):
                what = "an integer" if kind is int else "a number"
                raise ConfigError(f"{name}: expected {what} in {_range_text(meta)}, got {value!r}")
            lo, hi = meta["lo"], meta["hi"]
            if not math.isfinite(value) or value < lo or value > hi or (meta["lo_open"] and value == lo):
                raise ConfigError(f"{name}={value!r} is out of range; allowed: {_range_text(meta)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RewardClassifierConfig":
        """Build from a (partial, possibly nested) mapping; unknown fields are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{_P}: expected a mapping of fields, got {type(data).__name__}")
        valid = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise ConfigError(f"unknown field {', '.join(f'{_P}.{k}' for k in unknown)}; valid fields of "
                              f"{_P}: {', '.join(sorted(valid))}")
        kwargs: dict = {}
        for name, value in data.items():
            if name == "encoder":
                if not isinstance(value, EncoderConfig):
                    try:
                        value = _from_dict(EncoderConfig, value if value is not None else {}, f"{_P}.encoder")
                    except ConfigError as exc:  # EncoderConfig names itself sac.encoder
                        raise ConfigError(str(exc).replace("sac.encoder", f"{_P}.encoder")) from None
            elif name == "keys":
                if isinstance(value, str):
                    value = tuple(k.strip() for k in value.split(",") if k.strip()) or value
                elif isinstance(value, list):
                    value = tuple(value)
            elif name == "hidden_dims":
                value = _coerce(value, Tuple[int, ...], f"{_P}.hidden_dims")
            elif name in ("lr", "val_fraction"):
                value = _coerce(value, float, f"{_P}.{name}")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_overrides(cls, overrides: Sequence[str],
                       base: "Optional[RewardClassifierConfig | Mapping[str, Any]]" = None
                       ) -> "RewardClassifierConfig":
        """Apply ``field=value`` overrides (``lr=1e-3``, ``encoder.channels=16``,
        ``hidden_dims=64,64``, ``keys=front,wrist``); values are YAML scalars or lists."""
        data = base.to_dict() if isinstance(base, RewardClassifierConfig) else dict(base or {})
        data = json.loads(json.dumps(data))  # deep copy of plain data
        apply_overrides(data, overrides, _P)
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists), for JSON."""
        return _to_dict(self)


# ---------------------------------------------------------------------------------------- model


class RewardClassifier(nn.Module):
    """``ObservationEncoder`` + MLP head: dict of (batched) tensors -> success logit ``(B,)``."""

    def __init__(self, spec: ObsSpec, config: RewardClassifierConfig) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = ObservationEncoder(spec, config.encoder, normalize_state=True)
        self.head = MLP(self.encoder.out_dim, config.hidden_dims, 1, layer_norm=True, act="relu")

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(obs)).squeeze(-1)


# ---------------------------------------------------------------------------------------- data


class Frames(NamedTuple):
    """Labelled frames: ``observations[k]`` ``(N, ...)``, ``labels`` bool ``(N,)``, and the index of
    the episode each frame comes from, ``episode_index`` ``(N,)`` (for splits by episode)."""

    observations: dict
    labels: np.ndarray
    episode_index: np.ndarray


def _default_keys(episodes: Sequence[Episode]) -> Tuple[str, ...]:
    common = set(episodes[0].observations)
    for ep in episodes[1:]:
        common &= set(ep.observations)
    images = sorted(k for k in common if all(_is_image(ep.observations[k]) for ep in episodes))
    return tuple(images) if images else tuple(sorted(common))


def _is_image(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and a.ndim == 4


def frames_from_episodes(episodes: Sequence[Episode], keys: Optional[Sequence[str]] = None,
                         names: Optional[Sequence[str]] = None) -> Frames:
    """Every observation of every episode with its label: observation ``t + 1`` is labelled
    ``episode.success[t]``; observation 0 (after reset) is a negative.

    ``keys`` default: every image key the episodes share, or every state key if there is none.
    A key missing from an episode, or with another shape than in the first episode, raises a
    ``ValueError`` naming the key and the episode (``names[i]``, e.g. its file)."""
    episodes = list(episodes)
    if not episodes:
        raise ValueError("no episodes to learn from")
    names = list(names) if names is not None else [f"episode {i}" for i in range(len(episodes))]
    keys = tuple(keys) if keys is not None else _default_keys(episodes)
    if not keys:
        raise ValueError(f"{names[0]}: has no observation keys")
    for key in keys:
        first = episodes[0].observations.get(key)
        for name, ep in zip(names, episodes):
            value = ep.observations.get(key)
            if value is None:
                raise ValueError(f"{name}: has no observation key {key!r} (it has: "
                                 f"{', '.join(sorted(ep.observations))})")
            if value.shape[1:] != first.shape[1:] or value.dtype != first.dtype:
                raise ValueError(f"{name}: observation {key!r} is {value.dtype} {value.shape[1:]}, but "
                                 f"{first.dtype} {first.shape[1:]} in {names[0]}")
    obs = {k: np.concatenate([ep.observations[k] for ep in episodes], axis=0) for k in keys}
    labels = np.concatenate([np.concatenate([[False], ep.success.astype(bool)]) for ep in episodes])
    index = np.concatenate([np.full(ep.length + 1, i, dtype=np.int64) for i, ep in enumerate(episodes)])
    return Frames(obs, labels, index)


def _load_sources(episodes: Any) -> Tuple[list, list, list]:
    """``episodes``: Episode objects, or folders / files of them. -> (episodes, names, sources)."""
    if isinstance(episodes, (str, os.PathLike, Episode)):
        episodes = [episodes]
    eps, names, sources = [], [], []
    for item in episodes:
        if isinstance(item, Episode):
            eps.append(item)
            names.append(f"episode {len(eps) - 1}")
            continue
        path = Path(os.fspath(item))
        sources.append(str(path))
        files = [path] if path.is_file() else list_episodes(path)
        if not files:
            raise ValueError(f"--episodes {path}: no episodes (*.npz) in it")
        for f in files:
            eps.append(load_episode(f))
            names.append(str(f))
    if not eps:
        raise ValueError("no episodes given (pass --episodes DIR)")
    return eps, names, sources


def _split(has_positive: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Validation episode indices: ``fraction`` of each outcome group (with / without success
    frames), at least one of a group of two or more, so both outcomes are checked."""
    n = len(has_positive)
    if fraction == 0:
        return np.zeros(0, dtype=np.int64)
    if n < 2:
        raise ValueError(f"{_P}.val_fraction={fraction} holds out whole episodes, but there is only {n}: "
                         f"record more episodes or set val_fraction=0")
    rng = np.random.default_rng([seed, 1])
    val: list = []
    for group in (np.flatnonzero(has_positive), np.flatnonzero(~has_positive)):
        group = rng.permutation(group)
        if len(group) >= 2:
            val.extend(group[: min(max(1, round(fraction * len(group))), len(group) - 1)].tolist())
    if not val:  # e.g. one episode per outcome: hold out one at random
        val = [int(rng.integers(n))]
    return np.sort(np.asarray(val, dtype=np.int64))


def _torch_batch(spec: ObsSpec, obs: Mapping[str, np.ndarray], idx: np.ndarray) -> dict:
    out = {}
    for k in spec.keys:
        t = torch.from_numpy(np.ascontiguousarray(obs[k][idx]))
        out[k] = t if k in spec.image_keys else t.to(torch.float32)
    return out


@torch.no_grad()
def _probabilities(model: RewardClassifier, obs: Mapping[str, np.ndarray], idx: np.ndarray,
                   batch: int = 256) -> np.ndarray:
    model.eval()
    out = [torch.sigmoid(model(_torch_batch(model.spec, obs, idx[i:i + batch]))).numpy()
           for i in range(0, len(idx), batch)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """Accuracy, precision, recall, false-positive rate at ``threshold`` (None where undefined),
    and ``majority_accuracy``: that of always answering the more frequent class."""
    labels = np.asarray(labels, dtype=bool)
    pred = np.asarray(probs) >= threshold
    tp, fp = int(np.sum(pred & labels)), int(np.sum(pred & ~labels))
    fn, tn = int(np.sum(~pred & labels)), int(np.sum(~pred & ~labels))
    n, pos = len(labels), int(labels.sum())

    def ratio(a: int, b: int) -> Optional[float]:
        return a / b if b else None

    return {"accuracy": ratio(tp + tn, n), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "false_positive_rate": ratio(fp, fp + tn), "majority_accuracy": ratio(max(pos, n - pos), n),
            "frames": n, "positives": pos, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


# ---------------------------------------------------------------------------------------- training


def train_reward_classifier(config: RewardClassifierConfig, episodes: Any, out_dir: PathLike,
                            progress: Optional[Callable] = None) -> dict:
    """Train on ``episodes`` (Episode objects, or episode folders/files), validate on held-out
    episodes, write ``OUT/model.safetensors`` + ``OUT/classifier.json``; returns a summary.

    Bad input (no episodes, no positive or no negative frame, an unknown key, too few episodes to
    hold any out) raises ``ValueError`` naming it."""
    start = time.perf_counter()
    eps, names, sources = _load_sources(episodes)
    frames = frames_from_episodes(eps, config.keys, names)
    obs, labels, ep_index = frames
    keys = tuple(sorted(obs))
    where = ", ".join(sources) if sources else f"{len(eps)} episodes"
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError(f"{where}: no positive (success) frames; record successful episodes too")
    if n_pos == len(labels):
        raise ValueError(f"{where}: no negative (failure) frames")
    for k in keys:
        if not np.issubdtype(obs[k].dtype, np.number) and obs[k].dtype != np.bool_:
            raise ValueError(f"{names[0]}: observation {k!r} has dtype {obs[k].dtype}, not numeric")

    has_pos = np.zeros(len(eps), dtype=bool)
    has_pos[np.unique(ep_index[labels])] = True
    val_eps = _split(has_pos, config.val_fraction, config.seed)
    is_val = np.isin(ep_index, val_eps)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    y_train = labels[train_idx]
    tpos = int(y_train.sum())
    if tpos == 0 or tpos == len(y_train):
        missing = "positive (success)" if tpos == 0 else "negative"
        raise ValueError(f"{where}: after holding out {len(val_eps)} episode(s) for validation the training "
                         f"episodes have no {missing} frames; record more episodes or set "
                         f"{_P}.val_fraction=0")

    spec = _spec_of({k: obs[k].shape[1:] for k in keys}, {k: obs[k].dtype for k in keys})
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 2])
    model = RewardClassifier(spec, config)
    if model.encoder.needs_state_stats:
        model.encoder.fit_state_normalizer(
            np.concatenate([obs[k][train_idx].reshape(len(train_idx), -1) for k in spec.state_keys], axis=1))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Both classes equally likely in a minibatch, whatever their share of the frames.
    p = np.where(y_train, 0.5 / tpos, 0.5 / (len(y_train) - tpos))
    p /= p.sum()
    bar = progress(total=config.steps, desc="reward classifier") if progress else None
    losses: list = []
    model.train()
    for step in range(config.steps):
        idx = train_idx[rng.choice(len(train_idx), size=config.batch_size, p=p)]
        batch = _torch_batch(spec, obs, idx)
        if config.augment_pad > 0:
            for k in spec.image_keys:
                batch[k] = random_shift(batch[k], config.augment_pad, gen)
        target = torch.from_numpy(labels[idx].astype(np.float32))
        loss = F.binary_cross_entropy_with_logits(model(batch), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()

    sub = rng.permutation(train_idx)[:2000]  # training fit, on a sample (no augmentation)
    train_m = classification_metrics(_probabilities(model, obs, sub), labels[sub])
    val_m = classification_metrics(_probabilities(model, obs, val_idx), labels[val_idx]) if len(val_idx) else None
    train_m["loss"] = float(np.mean(losses[-max(1, min(50, len(losses))):]))

    wall = time.perf_counter() - start
    data = {"sources": sources, "episodes": len(eps), "frames": int(len(labels)), "positives": n_pos,
            "val_episodes": [names[i] for i in val_eps], "val_frames": int(len(val_idx))}
    _save(Path(out_dir), model, config, spec, {"threshold": THRESHOLD, "train": train_m, "val": val_m}, data,
          round(wall, 2))
    v = val_m or {}
    return {"out": str(out_dir), "keys": list(keys), "episodes": len(eps), "frames": int(len(labels)),
            "positives": n_pos, "val_episodes": len(val_eps), "val_frames": int(len(val_idx)),
            "val_accuracy": v.get("accuracy"), "val_precision": v.get("precision"),
            "val_recall": v.get("recall"), "val_false_positive_rate": v.get("false_positive_rate"),
            "val_majority_accuracy": v.get("majority_accuracy"), "train_accuracy": train_m["accuracy"],
            "train_loss": train_m["loss"], "wall_s": round(time.perf_counter() - start, 2)}


def _spec_of(shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, Any]) -> ObsSpec:
    import gymnasium as gym

    boxes = {}
    for k, shape in shapes.items():
        dt = np.dtype(dtypes[k])
        if dt == np.uint8:
            boxes[k] = gym.spaces.Box(0, 255, tuple(shape), np.uint8)
        else:
            boxes[k] = gym.spaces.Box(-np.inf, np.inf, tuple(shape), np.float32)
    return ObsSpec.from_space(gym.spaces.Dict(boxes))


def _save(out: Path, model: RewardClassifier, config: RewardClassifierConfig, spec: ObsSpec, metrics: dict,
          data: dict, wall_s: float) -> None:
    from safetensors.torch import save_file

    from serl_ctrl import __version__
    from serl_ctrl.utils.atomic import atomic_path, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    ident = uuid.uuid4().hex
    meta = {"format": FORMAT, "version": VERSION, "id": ident, "weights": WEIGHTS_NAME,
            "config": config.to_dict(), "keys": list(spec.keys),
            "shapes": {k: list(spec.shapes[k]) for k in spec.keys},
            "dtypes": {k: str(np.dtype(spec.dtypes[k])) for k in spec.keys},
            "threshold": THRESHOLD, "metrics": metrics, "data": data, "wall_s": wall_s,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "serl_ctrl_version": __version__}
    text = json.dumps(meta, indent=1, allow_nan=False) + "\n"  # fail before writing anything
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "id": ident})
    atomic_write_text(out / META_NAME, text)


# ---------------------------------------------------------------------------------------- loading


class LoadedRewardClassifier:
    """A trained classifier: ``classifier(obs) -> P(success)`` for one observation dict (the
    environment's; extra keys are ignored), ``probabilities(batch) -> (B,)`` for a batch."""

    def __init__(self, model: RewardClassifier, meta: dict, path: Path) -> None:
        self.model = model.eval()
        self.meta = meta
        self.path = path
        self.keys: Tuple[str, ...] = tuple(meta["keys"])
        self.shapes = {k: tuple(meta["shapes"][k]) for k in self.keys}
        self.threshold = float(meta.get("threshold", THRESHOLD))
        self.metrics = meta.get("metrics", {})

    def _tensors(self, obs: Mapping[str, Any]) -> Tuple[dict, bool]:
        if not isinstance(obs, Mapping):
            raise TypeError(f"reward classifier {self.path}: expects an observation dict with keys "
                            f"{', '.join(self.keys)}, got {type(obs).__name__}")
        out, batched = {}, None
        for k in self.keys:
            if k not in obs:
                raise KeyError(f"reward classifier {self.path}: the observation has no key {k!r} "
                               f"(it needs {', '.join(self.keys)}; the observation has {', '.join(sorted(obs))})")
            a = np.asarray(obs[k])
            shape = self.shapes[k]
            if a.shape == shape:
                b = False
            elif a.shape[1:] == shape:
                b = True
            else:
                raise ValueError(f"reward classifier {self.path}: observation {k!r} has shape {a.shape}, "
                                 f"trained on {shape}")
            if batched is not None and b != batched:
                raise ValueError(f"reward classifier {self.path}: observation {k!r} is "
                                 f"{'' if b else 'not '}batched unlike the others")
            batched = b
            t = torch.from_numpy(np.ascontiguousarray(a if b else a[None]))
            out[k] = t if k in self.model.spec.image_keys else t.to(torch.float32)
        return out, bool(batched)

    @torch.no_grad()
    def probabilities(self, obs: Mapping[str, Any]) -> np.ndarray:
        """P(success) of each observation of a batch (or of one, as a length-1 array)."""
        tensors, _ = self._tensors(obs)
        return torch.sigmoid(self.model(tensors)).numpy().astype(np.float64)

    def __call__(self, obs: Mapping[str, Any]) -> float:
        tensors, batched = self._tensors(obs)
        if batched:
            raise ValueError(f"reward classifier {self.path}: call it with one observation; use "
                             "probabilities() for a batch")
        with torch.no_grad():
            return float(torch.sigmoid(self.model(tensors))[0])

    def check_space(self, space: Any) -> None:
        """Raise ``ValueError`` naming the key if ``space`` (an env's observation space) lacks one
        of the classifier's keys or has it with another shape."""
        spaces = getattr(space, "spaces", None)
        if spaces is None:
            raise ValueError(f"reward classifier {self.path}: needs a Dict observation space with keys "
                             f"{', '.join(self.keys)}, the env's is {type(space).__name__}")
        for k in self.keys:
            if k not in spaces:
                raise ValueError(f"reward classifier {self.path}: needs observation key {k!r}, which the env "
                                 f"does not have (it has {', '.join(sorted(spaces))}; e.g. obs=pixels for "
                                 "camera keys)")
            if tuple(spaces[k].shape) != self.shapes[k]:
                raise ValueError(f"reward classifier {self.path}: observation {k!r} is {tuple(spaces[k].shape)} "
                                 f"in the env, the classifier was trained on {self.shapes[k]}")


def load_reward_classifier(path: PathLike) -> LoadedRewardClassifier:
    """Load a classifier written by :func:`train_reward_classifier`: its folder, its
    ``classifier.json`` or its ``model.safetensors``. Errors name the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(os.fspath(path))
    meta_path = p / META_NAME if p.is_dir() else (p.parent / META_NAME if p.suffix == ".safetensors" else p)
    if not meta_path.is_file():
        raise FileNotFoundError(f"reward classifier {meta_path} does not exist"
                                + (f" (no {META_NAME} in {p})" if p.is_dir() else ""))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"reward classifier {meta_path}: not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"reward classifier {meta_path}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise ValueError(f"reward classifier {meta_path}: version {meta.get('version')!r}, this serl_ctrl "
                         f"reads version {VERSION}")
    for key in ("id", "weights", "config", "keys", "shapes", "dtypes"):
        if key not in meta:
            raise ValueError(f"reward classifier {meta_path}: missing {key!r}")
    weights = meta_path.parent / str(meta["weights"])
    if not weights.is_file():
        raise FileNotFoundError(f"reward classifier {meta_path}: its weights {weights} do not exist")
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(weights))
    except Exception as exc:  # safetensors' own errors: a truncated or foreign file
        raise ValueError(f"reward classifier {weights}: unreadable ({type(exc).__name__}: {exc})") from None
    if header.get("id") != meta["id"]:
        raise ValueError(f"reward classifier {weights}: belongs to another {META_NAME} (id "
                         f"{header.get('id')} != {meta['id']} in {meta_path})")
    try:
        config = RewardClassifierConfig.from_dict(meta["config"])
        spec = _spec_of(meta["shapes"], meta["dtypes"])
        model = RewardClassifier(spec, config)
        model.load_state_dict(state, strict=True)
    except (ConfigError, RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"reward classifier {meta_path}: does not describe its weights "
                         f"({str(exc).splitlines()[0]})") from None
    return LoadedRewardClassifier(model, meta, meta_path)
