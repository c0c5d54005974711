"""The high-level planner: observation history -> the next language instruction (YAY Robot).

A small MLP maps the last ``n_obs_steps`` state observations to a point in MiniLM's sentence
embedding space; the planner's instruction is the candidate whose embedding is nearest by cosine
(retrieval over the instruction set). Candidates are the instructions of the training labels
(plus any a fine-tuning correction introduced); ``"stop"`` is never one: only a person stops the
robot. Training is a retrieval loss: cross-entropy over ``cosine(prediction, candidate) /
temperature``, labels from the scripted expert's per-step instructions.

* :func:`train_planner` fits a planner on labelled episodes (``serl-ctrl train-planner``).
* :func:`finetune_planner` continues training on a corrections log
  (:class:`~serl_ctrl.language.corrections.CorrectionLog`), each batch mixing corrections with the
  original labels so that the planner does not forget what it did right
  (``serl-ctrl finetune-planner``).
* :class:`PlannerRunner` stacks the observation history at run time, like the policy runtime.
* ``Planner.save`` / ``Planner.load``: ``NAME.safetensors`` (weights, normaliser, candidate
  embeddings) + ``NAME.json`` (config, keys, candidates), both written atomically, tied by a random
  id; never pickle.

Time indexing follows the episodes: the label of step ``t`` (``instructions[t]``) is the target for
the history ``obs[t - n_obs_steps + 1 .. t]`` (the first observation repeated before the start).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn.mlp import MLP
from ..utils.atomic import atomic_write_text
from ..utils.tensor_pair import load_pair, pair_paths, save_pair
from .conditioning import INSTRUCTION_DIM, INSTRUCTION_KEY, InstructionTable, episode_instructions

__all__ = ["PlannerConfig", "Planner", "PlannerRunner", "train_planner", "finetune_planner", "planner_windows",
           "train_planner_run", "finetune_planner_run",
           "NEVER_PLANNED", "FORMAT", "VERSION"]

FORMAT = "serl_ctrl.planner"
VERSION = 1
#: Instructions the planner never emits, whatever the labels say.
NEVER_PLANNED = frozenset({"stop", "slow down", "speed up"})


@dataclass
class PlannerConfig:
    """Planner settings (``serl-ctrl train-planner --set FIELD=VALUE``)."""

    obs_keys: tuple[str, ...] = ()      # state keys the planner reads; () = every float vector key of the demos
    n_obs_steps: int = 3                # observation history length (the latest last)
    hidden: tuple[int, ...] = (256, 256)
    temperature: float = 0.1            # of the retrieval softmax over cosine similarities
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    train_steps: int = 2000
    finetune_steps: int = 600
    finetune_lr: float = 3e-4
    correction_fraction: float = 0.5    # share of each fine-tuning batch drawn from the corrections
    std_min: float = 1e-2               # floor of the observation std in the normaliser

    def __post_init__(self) -> None:
        self.obs_keys, self.hidden = tuple(self.obs_keys), tuple(int(h) for h in self.hidden)
        for name in ("n_obs_steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"planner {name} must be >= 1, got {getattr(self, name)}")
        if not self.hidden:
            raise ValueError("planner hidden must name at least one layer size")
        if self.temperature <= 0 or self.lr <= 0 or self.finetune_lr <= 0:
            raise ValueError("planner temperature, lr and finetune_lr must be > 0")
        if self.train_steps < 0 or self.finetune_steps < 0:
            raise ValueError("planner train_steps and finetune_steps must be >= 0")
        if not 0.0 < self.correction_fraction <= 1.0:
            raise ValueError(f"correction_fraction must be in (0, 1], got {self.correction_fraction}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> "PlannerConfig":
        data = dict(data or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown planner field(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ============================================================================ data


def default_obs_keys(episode: Any) -> tuple[str, ...]:
    """Every float vector observation of an episode except the instruction embedding."""
    return tuple(sorted(k for k, v in episode.observations.items()
                        if v.dtype != np.uint8 and v.ndim == 2 and k != INSTRUCTION_KEY))


def planner_windows(episodes: Sequence[Any], obs_keys: Sequence[str], n_obs_steps: int
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({key: (N, n_obs_steps, dim)}, labels)``: one window per labelled step of ``episodes``."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in obs_keys}
    labels: list[str] = []
    ho = np.arange(n_obs_steps)
    for i, ep in enumerate(episodes):
        T = ep.length
        if T == 0:
            continue
        for k in obs_keys:
            if k not in ep.observations:
                raise KeyError(f"episode {i} has no observation {k!r}; it has {sorted(ep.observations)}")
        keep = np.array([bool(s) for s in ep.instructions])
        idx = np.clip(np.arange(T)[:, None] - n_obs_steps + 1 + ho, 0, T)[keep]
        for k in obs_keys:
            v = np.asarray(ep.observations[k], np.float32).reshape(T + 1, -1)
            out[k].append(v[idx])
        labels += [s for s in ep.instructions if s]
    if not labels:
        raise ValueError("no labelled steps: the planner learns from instruction labels (record with `serl-ctrl demos`)")
    return {k: np.concatenate(v) for k, v in out.items()}, labels


# ============================================================================ model


class Planner(nn.Module):
    """MLP from a normalised observation history to a unit vector in MiniLM space; retrieval picks
    the nearest candidate instruction (see the module docstring)."""

    def __init__(self, config: PlannerConfig, obs_dims: Mapping[str, int], instructions: Sequence[str],
                 instruction_embeddings: np.ndarray, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.obs_keys = tuple(config.obs_keys) or tuple(sorted(obs_dims))
        self.obs_dims = {k: int(obs_dims[k]) for k in self.obs_keys}
        self.metadata = dict(metadata or {})
        d = sum(self.obs_dims.values())
        self.register_buffer("obs_mean", torch.zeros(d))
        self.register_buffer("obs_std", torch.ones(d))
        self.net = MLP(d * config.n_obs_steps, config.hidden, INSTRUCTION_DIM)
        self.instructions: list[str] = []
        self.register_buffer("candidates", torch.zeros(0, INSTRUCTION_DIM))
        self.set_candidates(instructions, instruction_embeddings)

    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    def set_candidates(self, instructions: Sequence[str], embeddings: np.ndarray) -> None:
        """The retrieval set: ``instructions`` with their MiniLM ``embeddings`` (n, 384)."""
        keep = [i for i, s in enumerate(instructions) if s not in NEVER_PLANNED]
        if not keep:
            raise ValueError("the planner needs at least one instruction to choose from (stop is never one)")
        emb = np.asarray(embeddings, np.float32).reshape(len(instructions), INSTRUCTION_DIM)[keep]
        self.instructions = [instructions[i] for i in keep]
        self.candidates = F.normalize(torch.as_tensor(emb), dim=-1)

    def fit_normalizer(self, windows: Mapping[str, np.ndarray]) -> None:
        flat = np.concatenate([windows[k][:, -1] for k in self.obs_keys], axis=1)
        self.obs_mean.copy_(torch.as_tensor(flat.mean(0)))
        self.obs_std.copy_(torch.as_tensor(np.maximum(flat.std(0), self.config.std_min)))

    def features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """``obs[key]`` ``(B, H, dim)`` (H >= n_obs_steps; the last n are used) -> ``(B, n * D)``."""
        n = self.n_obs_steps
        parts = []
        for k in self.obs_keys:
            if k not in obs:
                raise KeyError(f"the planner needs observation {k!r}; got {sorted(obs)}")
            v = torch.as_tensor(np.asarray(obs[k], np.float32) if not isinstance(obs[k], torch.Tensor) else obs[k])
            if v.dim() == 2:
                v = v.unsqueeze(0)
            if v.shape[1] < n or v.shape[-1] != self.obs_dims[k]:
                raise ValueError(f"planner observation {k!r} has shape {tuple(v.shape)}; expected "
                                 f"(batch, >= {n}, {self.obs_dims[k]})")
            parts.append(v[:, v.shape[1] - n:].to(torch.float32))
        x = (torch.cat(parts, dim=-1) - self.obs_mean) / self.obs_std
        return x.reshape(x.shape[0], -1)

    def forward(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Predicted instruction embeddings ``(B, 384)``, unit norm."""
        return F.normalize(self.net(self.features(obs)), dim=-1)

    def logits(self, obs: Mapping[str, Any]) -> torch.Tensor:
        return self(obs) @ self.candidates.T / self.config.temperature

    @torch.inference_mode()
    def predict(self, obs: Mapping[str, Any]) -> list[tuple[str, float]]:
        """``[(instruction, cosine)]`` per batch entry: the nearest candidate to the prediction."""
        cos = self(obs) @ self.candidates.T
        best = cos.argmax(-1)
        return [(self.instructions[int(i)], float(cos[j, i])) for j, i in enumerate(best)]

    def accuracy(self, windows: Mapping[str, np.ndarray], labels: Sequence[str]) -> float:
        """Fraction of ``labels`` the planner retrieves from ``windows``."""
        if not len(labels):
            return float("nan")
        pred = [p for p, _ in self.predict(windows)]
        return float(np.mean([p == s for p, s in zip(pred, labels)]))

    # ------------------------------------------------------------------ save / load
    def describe(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
                "obs_keys": list(self.obs_keys), "obs_dims": self.obs_dims, "instructions": list(self.instructions),
                "metadata": self.metadata}

    def save(self, path: str | Path) -> Path:
        """Write ``NAME.safetensors`` then ``NAME.json`` (both atomic); returns the ``.safetensors`` path."""
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        return save_pair(*pair_paths(path, "planner"), tensors, self.describe(), FORMAT)

    @classmethod
    def load(cls, path: str | Path) -> "Planner":
        """Load a planner written by :meth:`save` (``NAME``, ``NAME.json``, ``NAME.safetensors`` or a
        folder holding ``planner.json``)."""
        st, js = pair_paths(path, "planner")
        desc, state = load_pair(st, js, FORMAT, VERSION, "planner")
        cfg = PlannerConfig.from_dict(desc["config"])
        n = len(desc["instructions"])
        planner = cls(cfg, desc["obs_dims"], desc["instructions"], np.zeros((n, INSTRUCTION_DIM), np.float32),
                      desc.get("metadata"))
        missing, unexpected = planner.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{st}: tensors do not match {js} (missing {missing[:5]}, unexpected {unexpected[:5]})")
        planner.eval()
        return planner


# ============================================================================ training


def _optimise(planner: Planner, sample: Callable[[np.random.Generator], tuple[dict, np.ndarray]], steps: int,
              lr: float, weight_decay: float, seed: int, progress: Callable | None, desc: str) -> dict[str, Any]:
    opt = torch.optim.AdamW(planner.net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / max(steps, 1))))
    rng = np.random.default_rng(seed)
    bar = progress(total=steps, desc=desc) if progress else None
    losses: list[float] = []
    planner.train()
    start = time.perf_counter()
    try:
        for _ in range(steps):
            obs, target = sample(rng)
            loss = F.cross_entropy(planner.logits(obs), torch.as_tensor(target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    planner.eval()
    wall = time.perf_counter() - start
    return {"steps": steps, "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
            "wall_s": round(wall, 3)}


def _label_index(planner: Planner, labels: Sequence[str]) -> np.ndarray:
    index = {s: i for i, s in enumerate(planner.instructions)}
    return np.array([index.get(s, -1) for s in labels], np.int64)


def train_planner(episodes: Sequence[Any], config: PlannerConfig | Mapping[str, Any] | None = None, *,
                  steps: int | None = None, seed: int = 0, table: InstructionTable | None = None,
                  progress: Callable | None = None, metadata: Mapping[str, Any] | None = None
                  ) -> tuple[Planner, dict[str, Any]]:
    """Train a planner on labelled ``episodes``; returns ``(planner, metrics)``.

    Every labelled step is one example (label ``instructions[t]`` for the history ending at
    ``obs[t]``); steps labelled with an instruction the planner never emits (stop, speed) are left out.
    """
    cfg = config if isinstance(config, PlannerConfig) else PlannerConfig.from_dict(config)
    episodes = [ep for ep in episodes if ep.length > 0]
    if not episodes:
        raise ValueError("train_planner needs at least one episode with steps")
    keys = cfg.obs_keys or default_obs_keys(episodes[0])
    cfg.obs_keys = tuple(keys)
    windows, labels = planner_windows(episodes, keys, cfg.n_obs_steps)
    instructions = [s for s in episode_instructions(episodes) if s not in NEVER_PLANNED]
    table = table or InstructionTable()
    dims = {k: int(windows[k].shape[-1]) for k in keys}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        planner = Planner(cfg, dims, instructions, table.many(instructions), metadata)
    planner.fit_normalizer(windows)
    target = _label_index(planner, labels)
    keep = target >= 0
    windows = {k: v[keep] for k, v in windows.items()}
    target, labels = target[keep], [s for s, k in zip(labels, keep) if k]

    def sample(rng):
        idx = rng.integers(0, len(target), size=cfg.batch_size)
        return {k: v[idx] for k, v in windows.items()}, target[idx]

    steps = cfg.train_steps if steps is None else int(steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        metrics = _optimise(planner, sample, steps, cfg.lr, cfg.weight_decay, seed, progress, "train planner")
    metrics.update(n_examples=len(target), n_episodes=len(episodes), instructions=list(planner.instructions),
                   train_accuracy=planner.accuracy(windows, labels), seed=seed)
    return planner, metrics


def finetune_planner(planner: Planner, corrections: Any, episodes: Sequence[Any] | None = None, *,
                     steps: int | None = None, seed: int = 0, table: InstructionTable | None = None,
                     progress: Callable | None = None) -> dict[str, Any]:
    """Continue training ``planner`` (in place) on a corrections log, mixed with ``episodes``.

    Each batch draws ``config.correction_fraction`` of its examples from the corrections (observation
    history -> corrected instruction) and the rest from the original labelled ``episodes`` (all from
    the corrections when ``episodes`` is None or empty: then the planner may forget). Corrections
    of kind stop / speed are not planner instructions and are skipped; an instruction the planner
    did not know joins its candidates (embedded with MiniLM). Returns metrics, among them the
    accuracy on the corrected states before and after.
    """
    cfg = planner.config
    usable = [i for i, e in enumerate(corrections.entries) if e.instruction not in NEVER_PLANNED]
    if not usable:
        raise ValueError("the corrections log holds no planner instruction to learn from "
                         f"({len(corrections)} entries, all stop/speed or none)")
    c_obs_all = corrections.observations(planner.obs_keys, cfg.n_obs_steps)
    c_obs = {k: v[usable] for k, v in c_obs_all.items()}
    c_labels = [corrections.entries[i].instruction for i in usable]
    new = [s for s in dict.fromkeys(c_labels) if s not in planner.instructions]
    if new:
        from .vocabulary import instruction_id

        for s in new:
            instruction_id(s)  # only canonical instructions
        table = table or InstructionTable()
        names = [*planner.instructions, *new]
        emb = np.concatenate([planner.candidates.numpy(), table.many(new)])
        planner.set_candidates(names, emb)
    before = planner.accuracy(c_obs, c_labels)
    c_target = _label_index(planner, c_labels)
    d_obs, d_target = None, None
    if episodes:
        windows, labels = planner_windows(list(episodes), planner.obs_keys, cfg.n_obs_steps)
        target = _label_index(planner, labels)
        keep = target >= 0
        d_obs, d_target = {k: v[keep] for k, v in windows.items()}, target[keep]
        demo_before = planner.accuracy(d_obs, [planner.instructions[i] for i in d_target])
    n_c = max(1, int(round(cfg.batch_size * cfg.correction_fraction))) if d_target is not None else cfg.batch_size
    n_d = cfg.batch_size - n_c

    def sample(rng):
        ci = rng.integers(0, len(c_target), size=n_c)
        obs = {k: v[ci] for k, v in c_obs.items()}
        tgt = c_target[ci]
        if d_target is not None and n_d > 0:
            di = rng.integers(0, len(d_target), size=n_d)
            obs = {k: np.concatenate([obs[k], d_obs[k][di]]) for k in obs}
            tgt = np.concatenate([tgt, d_target[di]])
        return obs, tgt

    steps = cfg.finetune_steps if steps is None else int(steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        metrics = _optimise(planner, sample, steps, cfg.finetune_lr, cfg.weight_decay, seed, progress,
                            "finetune planner")
    metrics.update(corrections=len(c_labels), corrections_skipped=len(corrections) - len(c_labels),
                   new_instructions=new, correction_accuracy_before=before,
                   correction_accuracy_after=planner.accuracy(c_obs, c_labels),
                   mixed_with_demos=d_target is not None, seed=seed)
    if d_target is not None:
        metrics.update(demo_accuracy_before=demo_before,
                       demo_accuracy_after=planner.accuracy(d_obs, [planner.instructions[i] for i in d_target]))
    history = planner.metadata.setdefault("finetuned", [])
    history.append({"corrections": len(c_labels), "steps": steps, "seed": seed})
    return metrics


# ============================================================================ run time


class PlannerRunner:
    """Runs a :class:`Planner` one observation at a time (history stacking, first one repeated).

    ``dwell``: ticks a different instruction must win in a row before the runner switches to it
    (1: switch at once). Two damps the flicker of a planner between two instructions in states it
    has not seen, at the price of one tick of delay at every segment boundary.
    """

    def __init__(self, planner: Planner, dwell: int = 1) -> None:
        if dwell < 1:
            raise ValueError(f"dwell must be >= 1, got {dwell}")
        self.planner = planner.eval()
        self.dwell = int(dwell)
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=planner.n_obs_steps)
        self.last_score: float | None = None
        self._current: str | None = None
        self._candidate: tuple[str, int] | None = None

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return self.planner.obs_keys

    @property
    def history_len(self) -> int:
        return self.planner.n_obs_steps

    def reset(self) -> None:
        self._history.clear()
        self.last_score = None
        self._current = None
        self._candidate = None

    def push(self, obs: Mapping[str, Any]) -> None:
        item = {}
        for k in self.planner.obs_keys:
            if k not in obs:
                raise KeyError(f"the planner needs observation {k!r}; got {sorted(obs)}")
            item[k] = np.asarray(obs[k], np.float32).reshape(-1)
        if not self._history:
            for _ in range(self.planner.n_obs_steps - 1):
                self._history.append(item)
        self._history.append(item)

    def history(self) -> dict[str, np.ndarray]:
        """``{key: (n_obs_steps, dim)}``: the window the planner decides on."""
        return {k: np.stack([h[k] for h in self._history]) for k in self.planner.obs_keys}

    def next(self, obs: Mapping[str, Any]) -> str:
        """Push ``obs`` and return the planner's instruction for the new history."""
        self.push(obs)
        (instruction, score), = self.planner.predict({k: v[None] for k, v in self.history().items()})
        self.last_score = score
        if self._current is None or instruction == self._current or self.dwell == 1:
            self._current, self._candidate = instruction, None
        else:
            n = self._candidate[1] + 1 if self._candidate and self._candidate[0] == instruction else 1
            self._candidate = (instruction, n)
            if n >= self.dwell:
                self._current, self._candidate = instruction, None
        return self._current


# ============================================================================ command-line entry points


def train_planner_run(demos: str | Path, out: str | Path, overrides: Mapping[str, Any] | None = None, *,
                      steps: int | None = None, seed: int = 0, episodes: int | None = None,
                      progress: Callable | None = None) -> dict[str, Any]:
    """``serl-ctrl train-planner``: train on the first ``episodes`` episodes of ``demos`` (all by
    default) and write ``OUT/planner.safetensors`` + ``OUT/planner.json`` and ``OUT/metrics.json``."""
    from ..data.episodes import load_episodes

    eps = load_episodes(demos)
    if episodes is not None:
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        eps = eps[:episodes]
    if not eps:
        raise ValueError(f"{demos} holds no episodes")
    meta = {"demos": str(demos), "demo_episodes": len(eps), "task": (eps[0].metadata or {}).get("task"),
            "train_seed": seed}
    planner, metrics = train_planner(eps, overrides, steps=steps, seed=seed, progress=progress, metadata=meta)
    out = Path(out)
    path = planner.save(out / "planner")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return {"planner": str(out), "file": str(path), **metrics}


def finetune_planner_run(planner: str | Path, corrections: str | Path, out: str | Path, *,
                         demos: str | Path | None = None, steps: int | None = None, seed: int = 0,
                         progress: Callable | None = None) -> dict[str, Any]:
    """``serl-ctrl finetune-planner``: load ``planner``, fine-tune it on the corrections log mixed with
    its original demonstrations (``demos``, default: the ones it was trained on, if still there),
    write the result to ``out`` (the input planner is left as it was)."""
    from ..data.episodes import load_episodes
    from .corrections import CorrectionLog

    model = Planner.load(planner)
    log = CorrectionLog.load(corrections)
    source = demos or model.metadata.get("demos")
    eps = None
    if source and Path(source).is_dir():
        eps = load_episodes(source)
        n = model.metadata.get("demo_episodes") if demos is None else None
        eps = eps[:n] if n else eps
    elif demos:
        raise FileNotFoundError(f"no demonstrations folder {demos}")
    metrics = finetune_planner(model, log, eps, steps=steps, seed=seed, progress=progress)
    out = Path(out)
    path = model.save(out / "planner")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    result = {"planner": str(out), "file": str(path), "demos": str(source) if eps else None, **metrics}
    if eps is None:
        result["warning"] = ("fine-tuned on the corrections alone: the original demonstrations were not found "
                             "(pass --demos to mix them in, so the planner does not forget)")
    return result
