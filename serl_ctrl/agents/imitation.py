"""Imitation learning of action chunks: what diffusion, consistency and Gaussian BC policies share.

Pieces, top to bottom
---------------------
``ImitationConfig``   the fields every chunked policy has (``n_obs_steps``, ``horizon``,
                      ``n_action_steps``, normalisation, optimisation, EMA, image encoder).
``ChunkDataset``      (observation history, action chunk) windows cut from recorded episodes.
``ImitationPolicy``   base class: an ``nn.Module`` that owns its normaliser and observation
                      encoder, ``predict_action(obs_history) -> (horizon, A)`` in env units,
                      ``save`` / ``load`` (safetensors + JSON, atomic, never pickle).
``train_policy``      the training loop (AdamW, cosine schedule with warm-up, EMA weights,
                      gradient clipping, progress, seeded).
``train_imitation``   the entry point the CLI calls: demos folder -> trained policy file.
``rollout_success``   success rate of a policy in simulation, through the runtime's chunk queue.

Time indexing of a training window (sample ``(episode, t)`` of an episode with ``T`` steps):
the observation history is ``obs[t - n_obs_steps + 1 .. t]`` and the action chunk is
``actions[t .. t + horizon - 1]``: chunk index 0 is the action to execute *now*, after the latest
observation. Windows that reach before the episode start repeat ``obs[0]``; chunks that reach past
the end repeat the last action (diffusion_policy's edge padding), and ``action_mask`` marks which
chunk entries are real. At run time the queue executes the first ``n_action_steps`` actions of
each chunk (``serl_ctrl.runtime.policy.Policy``).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import copy
import dataclasses
import json
import math
import shutil
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from serl_ctrl.data.replay import ObsSpec
from serl_ctrl.nn.encoders import ObservationEncoder, random_shift
from serl_ctrl.nn.normalizer import NORM_MODES, Normalizer
from serl_ctrl.utils.atomic import atomic_write_text
from serl_ctrl.utils.device import resolve_device
from serl_ctrl.utils.tensor_pair import load_pair, pair_paths, save_pair

__all__ = [
    "ALGOS",
    "ImitationConfig",
    "ChunkDataset",
    "ImitationPolicy",
    "ExportModule",
    "DeployModule",
    "NamedInputs",
    "EMA",
    "train_policy",
    "train_imitation",
    "build_imitation",
    "save_trained",
    "rollout_success",
    "load_policy",
    "policy_class",
    "runtime_policy",
    "obs_mode_for",
]

ALGOS = ("diffusion", "consistency", "bc")
FORMAT = "serl_ctrl.imitation_policy"
VERSION = 1


# ============================================================================ config


class ConfigError(ValueError):
    """A configuration field is unknown or out of range (the message names it)."""


@dataclass
class ImitationConfig:
    """Fields shared by every chunked imitation policy (subclasses add their own)."""

    obs_keys: tuple[str, ...] = ()  # observation keys the policy reads; () = every key in the demos
    n_obs_steps: int = 2            # observation history length (the latest last)
    horizon: int = 16               # actions predicted per inference
    n_action_steps: int = 8         # actions executed from each chunk before the next inference
    obs_norm: str = "gaussian"      # state observation normalisation: limits | gaussian | identity
    action_norm: str = "limits"     # action normalisation (limits: data range -> [-1, 1])
    std_min: float = 1e-2           # floor of the std in gaussian normalisation
    train_steps: int = 5000         # default number of gradient steps of train_imitation
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    grad_clip: float = 1.0          # max gradient norm (0 = off)
    ema_power: float = 0.75         # EMA decay = 1 - (1 + step) ** -ema_power, capped at ema_max_decay
    ema_max_decay: float = 0.9999   # 0 = no EMA (the trained weights are used as they are)
    encoder: dict = field(default_factory=dict)  # serl_ctrl.agents.config.EncoderConfig overrides (images)

    def __post_init__(self) -> None:
        self.obs_keys = tuple(self.obs_keys)
        for name in ("n_obs_steps", "horizon", "n_action_steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.n_action_steps > self.horizon:
            raise ConfigError(f"n_action_steps={self.n_action_steps} must be <= horizon={self.horizon}")
        for name in ("obs_norm", "action_norm"):
            if getattr(self, name) not in NORM_MODES:
                raise ConfigError(f"{name}={getattr(self, name)!r}; valid: {', '.join(NORM_MODES)}")
        if not 0.0 <= self.ema_max_decay < 1.0:
            raise ConfigError(f"ema_max_decay must be in [0, 1), got {self.ema_max_decay}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.train_steps < 0 or self.warmup_steps < 0:
            raise ConfigError("train_steps and warmup_steps must be >= 0")
        if not isinstance(self.encoder, dict):
            raise ConfigError(f"encoder must be a mapping of EncoderConfig fields, got {self.encoder!r}")
        self.encoder_config()  # validates the encoder fields now, not at the first image

    def encoder_config(self):
        from serl_ctrl.agents.config import EncoderConfig

        try:
            return EncoderConfig(**self.encoder)
        except TypeError as exc:
            valid = ", ".join(f.name for f in fields(EncoderConfig))
            raise ConfigError(f"encoder: {exc}; valid fields: {valid}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None):
        """Build from a (partial) mapping; unknown keys are an error listing the valid ones."""
        data = dict(data or {})
        valid = {f.name: f for f in fields(cls)}
        unknown = sorted(k for k in data if k not in valid)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(valid))}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in data.items():
            tp = hints[k]
            if typing.get_origin(tp) is tuple and isinstance(v, (list, tuple)):
                v = tuple(v)
            elif tp is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            elif tp is float and isinstance(v, str):
                try:  # YAML 1.1 reads "1e-3" (no dot) as a string
                    v = float(v)
                except ValueError:
                    raise ConfigError(f"{cls.__name__}.{k}: expected a number, got {v!r}") from None
            if tp in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{cls.__name__}.{k}: expected {tp.__name__}, got {v!r}")
            kwargs[k] = v
        return cls(**kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# ============================================================================ data


class ChunkDataset:
    """(observation history, action chunk) training windows from episodes (see module docstring).

    Args:
        episodes: ``serl_ctrl.data.episodes.Episode`` objects with the same observation layout.
        obs_keys: which observation keys to keep (default: all of the first episode).
        n_obs_steps, horizon: window sizes.

    ``sample(batch_size, rng)`` returns numpy arrays: ``obs[key]`` ``(B, n_obs_steps, *shape)``,
    ``action`` ``(B, horizon, A)`` float32 and ``action_mask`` ``(B, horizon)`` bool.
    """

    def __init__(self, episodes: Sequence[Any], obs_keys: Sequence[str] | None = None,
                 n_obs_steps: int = 2, horizon: int = 16) -> None:
        episodes = [ep for ep in episodes if ep.length > 0]
        if not episodes:
            raise ValueError("ChunkDataset needs at least one episode with one step or more")
        keys = tuple(sorted(obs_keys)) if obs_keys else tuple(sorted(episodes[0].observations))
        for i, ep in enumerate(episodes):
            missing = [k for k in keys if k not in ep.observations]
            if missing:
                raise KeyError(f"episode {i} has no observation key(s) {missing}; it has {sorted(ep.observations)}")
        self.obs_keys = keys
        self.n_obs_steps, self.horizon = int(n_obs_steps), int(horizon)
        # every observation of every episode (T + 1 each: the final one is a TD target's next state)
        self.frames = {k: np.concatenate([ep.observations[k] for ep in episodes]) for k in keys}
        for k in keys:
            if self.frames[k].dtype != np.uint8:
                self.frames[k] = self.frames[k].astype(np.float32, copy=False)
        self.actions = np.concatenate([ep.actions for ep in episodes]).astype(np.float32)
        self._rewards = np.concatenate([np.asarray(ep.rewards, np.float64) for ep in episodes])
        self._terminated = np.concatenate([np.asarray(ep.terminated, bool) for ep in episodes])
        obs_idx, act_idx, mask, where = [], [], [], []
        fstart = astart = 0
        ho, hh = np.arange(self.n_obs_steps), np.arange(self.horizon)
        for ep in episodes:
            T = ep.length
            t = np.arange(T)[:, None]
            obs_idx.append(fstart + np.clip(t - self.n_obs_steps + 1 + ho, 0, T - 1))
            raw = t + hh
            act_idx.append(astart + np.minimum(raw, T - 1))
            mask.append(raw < T)
            where.append(np.stack([np.full(T, fstart), np.full(T, astart), np.full(T, T), np.arange(T)], 1))
            fstart += T + 1
            astart += T
        self.obs_index = np.concatenate(obs_idx)
        self.action_index = np.concatenate(act_idx)
        self.action_mask = np.concatenate(mask)
        self._where = np.concatenate(where)  # (frame start, action start, T, t) per sample
        self._td: dict[str, np.ndarray] | None = None
        self.n_episodes = len(episodes)
        md = episodes[0].metadata or {}
        self.metadata = {k: md.get(k) for k in ("task", "backend", "obs_mode", "control_hz", "reward")}
        self.action_low = np.asarray(md.get("action_low", -np.ones(self.action_dim)), np.float32)
        self.action_high = np.asarray(md.get("action_high", np.ones(self.action_dim)), np.float32)

    def __len__(self) -> int:
        return int(self.obs_index.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.frames.items()}

    @property
    def obs_dtypes(self) -> dict[str, str]:
        return {k: "uint8" if v.dtype == np.uint8 else "float32" for k, v in self.frames.items()}

    def prepare_td(self, n_steps: int, gamma: float) -> None:
        """Add n-step TD fields to every batch (for Consistency-AC): executing the first ``n_steps``
        actions of a chunk from ``t`` gives ``reward`` (discounted sum), ``discount`` (``gamma^m``,
        0 once the episode terminated) and ``next_obs`` (the history at ``t + m``), with ``m`` the
        steps left in the episode, at most ``n_steps``."""
        fs, as_, T, t = self._where.T
        m = np.minimum(n_steps, T - t)
        reward = np.zeros(len(t))
        term = np.zeros(len(t), bool)
        for j in range(n_steps):
            live = j < m
            idx = np.where(live, as_ + t + j, 0)
            reward += np.where(live & ~term, gamma ** j * self._rewards[idx], 0.0)
            term |= live & self._terminated[idx]
        ho = np.arange(self.n_obs_steps)
        nxt = fs[:, None] + np.clip((t + m)[:, None] - self.n_obs_steps + 1 + ho, 0, T[:, None])
        self._td = {"next_index": nxt, "reward": reward.astype(np.float32),
                    "discount": np.where(term, 0.0, gamma ** m).astype(np.float32)}

    def get(self, idx: np.ndarray) -> dict[str, Any]:
        idx = np.asarray(idx)
        oi = self.obs_index[idx]
        out = {
            "obs": {k: v[oi] for k, v in self.frames.items()},
            "action": self.actions[self.action_index[idx]],
            "action_mask": self.action_mask[idx],
        }
        if self._td is not None:
            ni = self._td["next_index"][idx]
            out["next_obs"] = {k: v[ni] for k, v in self.frames.items()}
            out["reward"] = self._td["reward"][idx]
            out["discount"] = self._td["discount"][idx]
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        return self.get(rng.integers(0, len(self), size=batch_size))


# ============================================================================ policy base


def _dims(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


class ImitationPolicy(nn.Module, metaclass=ABCMeta):
    """Base class of the chunked imitation policies (diffusion, consistency, Gaussian BC).

    Subclasses set ``algo`` and ``config_class`` and implement ``compute_loss(batch, gen, ...)``,
    ``sample_normalized(obs, noise, generator)`` (an action chunk in normalised units),
    ``noise_shape`` and ``export_modules``.

    Observation tensors inside the policy are ``(B, L, *shape)`` with ``L`` the history length;
    state keys are normalised here, images stay uint8 and go to the image encoder (the same
    ``ObservationEncoder`` the SAC agent uses, DrQ random shift during training).
    """

    algo: ClassVar[str] = ""
    config_class: ClassVar[type] = ImitationConfig

    def __init__(self, config: ImitationConfig, obs_shapes: Mapping[str, Sequence[int]],
                 obs_dtypes: Mapping[str, str], action_dim: int, action_low: Sequence[float],
                 action_high: Sequence[float], metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not obs_shapes:
            raise ValueError("a policy needs at least one observation key")
        self.config = config
        self.metadata = dict(metadata or {})
        keys = tuple(sorted(obs_shapes))
        if config.obs_keys and tuple(sorted(config.obs_keys)) != keys:
            raise ValueError(f"config.obs_keys {config.obs_keys} do not match the observation keys {keys}")
        dtypes = {k: np.dtype(obs_dtypes.get(k, "float32")) for k in keys}
        shapes = {k: tuple(int(n) for n in obs_shapes[k]) for k in keys}
        image_keys = tuple(k for k in keys if dtypes[k] == np.uint8 and len(shapes[k]) == 3)
        state_keys = tuple(k for k in keys if k not in image_keys)
        self.spec = ObsSpec(is_dict=True, keys=keys, image_keys=image_keys, state_keys=state_keys,
                            shapes=shapes, dtypes=dtypes)
        self.obs_keys = keys
        self.action_dim = int(action_dim)
        self.action_low = np.asarray(action_low, dtype=np.float32).reshape(self.action_dim)
        self.action_high = np.asarray(action_high, dtype=np.float32).reshape(self.action_dim)
        self.register_buffer("_action_low", torch.as_tensor(self.action_low), persistent=False)
        self.register_buffer("_action_high", torch.as_tensor(self.action_high), persistent=False)
        self.normalizer = Normalizer({**{k: _dims(shapes[k]) for k in state_keys}, "action": self.action_dim})
        self.encoder = ObservationEncoder(self.spec, config.encoder_config())
        self.obs_feature_dim = self.encoder.out_dim * config.n_obs_steps
        self._gen = torch.Generator().manual_seed(0)  # inference noise (reseed with .seed())
        self._aux: dict[str, Any] = {}  # modules that must not be saved (teacher, targets)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, dataset: ChunkDataset, config: ImitationConfig | Mapping[str, Any] | None = None,
                     seed: int = 0, metadata: Mapping[str, Any] | None = None, **kwargs) -> "ImitationPolicy":
        """A policy shaped for ``dataset`` (keys, action bounds) with normalisers fitted on it.

        Network initialisation is seeded by ``seed`` without touching the global torch RNG."""
        cfg = config if isinstance(config, cls.config_class) else cls.config_class.from_dict(config or {})
        if (cfg.n_obs_steps, cfg.horizon) != (dataset.n_obs_steps, dataset.horizon):
            raise ValueError(f"dataset windows (n_obs_steps={dataset.n_obs_steps}, horizon={dataset.horizon}) "
                             f"differ from the config ({cfg.n_obs_steps}, {cfg.horizon})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = cls(cfg, dataset.obs_shapes, dataset.obs_dtypes, dataset.action_dim, dataset.action_low,
                         dataset.action_high, metadata={**dataset.metadata, **(metadata or {})}, **kwargs)
        policy.fit_normalizers(dataset)
        return policy

    def fit_normalizers(self, dataset: ChunkDataset) -> None:
        data = {k: dataset.frames[k].reshape(len(dataset.frames[k]), -1) for k in self.spec.state_keys}
        data["action"] = dataset.actions
        modes = {k: self.config.obs_norm for k in self.spec.state_keys}
        modes["action"] = self.config.action_norm
        self.normalizer.fit(data, modes, std_min=self.config.std_min)

    # ------------------------------------------------------------------ properties
    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def n_action_steps(self) -> int:
        return self.config.n_action_steps

    @property
    def history_len(self) -> int:
        """Observations ``predict_action`` wants (diffusion with self-guidance wants one more)."""
        return self.config.n_obs_steps

    def noise_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of the ``noise`` argument of :meth:`predict_action` (for ``batch`` samples)."""
        return (batch, self.horizon, self.action_dim)

    def _apply(self, fn, recurse=True):
        # .to()/.cpu()/.float() also move the modules kept out of the state dict (teacher, target)
        for m in getattr(self, "_aux", {}).values():
            if isinstance(m, nn.Module):
                m._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @property
    def device(self) -> torch.device:
        """Where the policy's tensors live (the CPU except while ``train_policy`` runs on a GPU)."""
        return self._action_low.device

    def seed(self, seed: int) -> None:
        """Reseed the generator that draws inference noise."""
        self._gen.manual_seed(int(seed))

    # ------------------------------------------------------------------ observations
    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``obs[key]`` ``(B, n_obs_steps, *shape)`` (env units, images uint8) -> ``(B, cond_dim)``."""
        n = self.config.n_obs_steps
        first = obs[self.obs_keys[0]]
        b = first.shape[0]
        flat = {}
        for k in self.obs_keys:
            v = obs[k].reshape(b * n, *self.spec.shapes[k])
            if k in self.spec.state_keys:
                v = self.normalizer[k].normalize(v.reshape(b * n, -1))
            flat[k] = v
        return self.encoder(flat).reshape(b, -1)

    def obs_to_torch(self, obs: Mapping[str, Any], length: int | None = None) -> dict[str, torch.Tensor]:
        """Numpy history ``(L, *shape)`` per key (or batched ``(B, L, *shape)``) -> tensors ``(B, L, ...)``.

        Checks keys and shapes and says what is wrong."""
        out = {}
        for k in self.obs_keys:
            if k not in obs:
                raise KeyError(f"observation history is missing key {k!r}; the policy needs {list(self.obs_keys)}")
            v = obs[k]
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            shape = self.spec.shapes[k]
            if t.dim() < len(shape) + 1 or tuple(t.shape[t.dim() - len(shape):]) != shape:
                raise ValueError(f"observation {k!r} has shape {tuple(t.shape)}; expected (history, *{shape})")
            if t.dim() == len(shape) + 1:
                t = t.unsqueeze(0)
            if t.dim() != len(shape) + 2:
                raise ValueError(f"observation {k!r} has shape {tuple(v.shape)}; expected (history, *{shape}) "
                                 f"or (batch, history, *{shape})")
            if length is not None and t.shape[1] != length:
                raise ValueError(f"observation {k!r} has a history of {t.shape[1]}; the policy needs {length}")
            if k in self.spec.image_keys:
                if t.dtype != torch.uint8:
                    raise ValueError(f"image {k!r} must be uint8, got {t.dtype}")
            else:
                t = t.to(torch.float32)
            out[k] = t
        return out

    def batch_to_torch(self, batch: Mapping[str, Any], gen: torch.Generator | None = None,
                       augment: bool = False) -> dict[str, Any]:
        """A ``ChunkDataset`` batch -> tensors: obs (env units), ``action`` normalised, ``action_mask``.

        With ``augment`` and images, DrQ's random shift is applied with ONE shift per sample for
        its whole observation history (the frames of a window stay aligned)."""
        obs = {k: torch.from_numpy(np.ascontiguousarray(batch["obs"][k])) for k in self.obs_keys}
        pad = self.config.encoder_config().augment_pad
        if augment and pad > 0:
            for k in self.spec.image_keys:
                b, n, h, w, c = obs[k].shape
                x = obs[k].permute(0, 2, 3, 1, 4).reshape(b, h, w, n * c)
                x = random_shift(x, pad, gen)
                obs[k] = x.reshape(b, h, w, n, c).permute(0, 3, 1, 2, 4).contiguous()
        dev = self.device
        for k in self.obs_keys:  # images travel as uint8 (4x less to copy to a GPU)
            obs[k] = obs[k].to(dev, torch.float32 if k in self.spec.state_keys else None, non_blocking=True)
        action = self.normalizer["action"].normalize(torch.from_numpy(np.asarray(batch["action"], np.float32)).to(dev))
        out = {"obs": obs, "action": action,
               "action_mask": torch.from_numpy(np.asarray(batch["action_mask"])).to(dev)}
        if "next_obs" in batch:
            out["next_obs"] = {k: v.to(dev) for k, v in self.obs_to_torch(batch["next_obs"]).items()}
            out["reward"] = torch.from_numpy(np.asarray(batch["reward"], np.float32)).to(dev)
            out["discount"] = torch.from_numpy(np.asarray(batch["discount"], np.float32)).to(dev)
        return out

    # ------------------------------------------------------------------ inference
    def unnormalize_action(self, x: torch.Tensor) -> torch.Tensor:
        a = self.normalizer["action"].unnormalize(x)
        return torch.maximum(torch.minimum(a, self._action_high), self._action_low)

    @abstractmethod
    def sample_normalized(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised action chunks ``(B, horizon, A)`` for normalised observations."""

    def make_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise drawn on a CPU generator (the same numbers on any device), on
        the policy's device."""
        return torch.randn(self.noise_shape(batch), generator=generator or self._gen).to(self.device)

    @torch.inference_mode()
    def predict_chunk(self, obs: Mapping[str, Any], noise: Any = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Batched :meth:`predict_action`: ``obs[key]`` ``(B, L, *shape)`` -> ``(B, horizon, A)`` tensor
        (on the CPU; the policy may sit on a GPU, as while Consistency-AC fine-tunes it online)."""
        dev = self.device
        t = {k: v.to(dev) for k, v in self.obs_to_torch(obs).items()}
        if noise is not None:
            noise = torch.as_tensor(np.asarray(noise, dtype=np.float32)) if not isinstance(noise, torch.Tensor) \
                else noise.to(torch.float32)
            b = t[self.obs_keys[0]].shape[0]
            if tuple(noise.shape) == self.noise_shape(1)[1:]:
                noise = noise.unsqueeze(0)
            if tuple(noise.shape) != self.noise_shape(b):
                raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {self.noise_shape(b)}")
            noise = noise.to(dev)
        return self.unnormalize_action(self.sample_normalized(t, noise, generator)).cpu()

    def predict_action(self, obs_history: Mapping[str, np.ndarray], noise: Any = None,
                       generator: torch.Generator | None = None) -> np.ndarray:
        """An action chunk ``(horizon, A)`` in env units for one observation history.

        ``obs_history[key]`` is ``(history_len, *shape)``, the latest observation last (images
        uint8). ``noise`` (shape :meth:`noise_shape` without the batch axis) makes the result
        deterministic; otherwise the policy's own generator draws it (see :meth:`seed`)."""
        return self.predict_chunk(obs_history, noise, generator)[0].numpy()

    def _last_window(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = self.config.n_obs_steps
        out = {}
        for k, v in obs.items():
            if not torch.jit.is_tracing() and v.shape[1] < n:
                raise ValueError(f"observation {k!r} has a history of {v.shape[1]}; the policy needs {n}")
            out[k] = v[:, v.shape[1] - n:]
        return out

    # ------------------------------------------------------------------ training hooks
    @abstractmethod
    def compute_loss(self, batch: Mapping[str, Any], gen: torch.Generator, step: int = 0,
                     total_steps: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one minibatch and its metrics."""

    def after_update(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (consistency targets are updated here)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ export
    @abstractmethod
    def export_modules(self) -> dict[str, nn.Module]:
        """The modules the ONNX exporter needs, by name (see ExportModule / DeployModule)."""

    # ------------------------------------------------------------------ save / load
    def describe(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-ready values (the sidecar of :meth:`save`)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "algo": self.algo,
            "config": self.config.to_dict(),
            "obs_shapes": {k: list(v) for k, v in self.spec.shapes.items()},
            "obs_dtypes": {k: str(v) for k, v in self.spec.dtypes.items()},
            "action_dim": self.action_dim,
            "action_low": [float(x) for x in self.action_low],
            "action_high": [float(x) for x in self.action_high],
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``NAME.safetensors`` (every weight and normaliser statistic) then ``NAME.json``
        (:mod:`serl_ctrl.utils.tensor_pair`: atomic, tied by an id). Returns the ``.safetensors`` path."""
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        return save_pair(*pair_paths(path), tensors, self.describe(), FORMAT, algo=self.algo)

    @classmethod
    def load(cls, path: str | Path) -> "ImitationPolicy":
        """Load a policy written by :meth:`save` (``NAME``, ``NAME.safetensors`` or ``NAME.json``).

        Called on the base class it returns the class named in the file; on a subclass, the file
        must hold that algorithm."""
        st, js = pair_paths(path)
        desc, state = load_pair(st, js, FORMAT, VERSION, "policy")
        klass = policy_class(desc["algo"])
        if cls is not ImitationPolicy and not issubclass(klass, cls):
            raise ValueError(f"{js} holds a {desc['algo']!r} policy, not a {cls.algo!r} one")
        policy = klass.from_description(desc)
        missing, unexpected = policy.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{st}: tensors do not match the {desc['algo']} policy described in {js} "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        policy.eval()
        return policy

    @classmethod
    def from_description(cls, desc: Mapping[str, Any]) -> "ImitationPolicy":
        cfg = cls.config_class.from_dict(desc["config"])
        return cls(cfg, {k: tuple(v) for k, v in desc["obs_shapes"].items()}, desc["obs_dtypes"], desc["action_dim"],
                   desc["action_low"], desc["action_high"], metadata=desc.get("metadata"))


def policy_class(algo: str) -> type[ImitationPolicy]:
    """The policy class of an algorithm name (``diffusion``, ``consistency``, ``bc``)."""
    if algo == "diffusion":
        from .diffusion import DiffusionPolicy

        return DiffusionPolicy
    if algo == "consistency":
        from .consistency import ConsistencyPolicy

        return ConsistencyPolicy
    if algo == "bc":
        from .bc import BCPolicy

        return BCPolicy
    raise ValueError(f"unknown imitation algorithm {algo!r}; valid: {', '.join(ALGOS)}")


def load_policy(path: str | Path) -> ImitationPolicy:
    """Load any imitation policy file (see :meth:`ImitationPolicy.load`)."""
    return ImitationPolicy.load(path)


# ============================================================================ export helper


class ExportModule(nn.Module, metaclass=ABCMeta):
    """Base of the modules ``export_modules()`` returns: named positional tensor inputs.

    ``input_names`` / ``output_names`` name the graph's inputs and outputs in ``forward``'s
    order, ``example_inputs(batch)`` builds matching tensors (zeros for observations), and
    ``dynamic_axes`` marks the batch axis. Observation inputs are named by their keys and shaped
    ``(B, history_len, *shape)``, or ``(B, *shape)`` when ``history_len == 1`` (as
    ``serl_ctrl.runtime`` feeds them; ``history_len`` is ``n_obs_steps``, one more with diffusion
    self-guidance); state in env units (float32), images uint8.
    """

    input_names: list[str]
    output_names: list[str]

    def __init__(self, policy: ImitationPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.obs_keys = list(policy.obs_keys)
        self.history_axis = policy.history_len > 1

    def _obs(self, tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        obs = {}
        for k, t in zip(self.obs_keys, tensors):
            obs[k] = t if self.history_axis else t.unsqueeze(1)
        return obs

    def obs_examples(self, batch: int = 1) -> list[torch.Tensor]:
        p = self.policy
        hist = (p.history_len,) if self.history_axis else ()
        out = []
        for k in self.obs_keys:
            dt = torch.uint8 if k in p.spec.image_keys else torch.float32
            out.append(torch.zeros((batch, *hist, *p.spec.shapes[k]), dtype=dt))
        return out

    @abstractmethod
    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Tensors matching ``input_names`` (zeros for observations, noise where needed)."""

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in [*self.input_names, *self.output_names]}


class DeployModule(nn.Module):
    """``actions (B, H, A) = g(obs: dict of batched tensors)``: what ``serl_ctrl.export`` and the
    runtime take (graph inputs = observation keys only).

    Wraps a positional export module whose trailing inputs are noise tensors, feeding it the MODE
    of the noise distribution (zeros): the graph is deterministic, so torch / ONNX parity is exact,
    and the robot gets the sampler's most likely chunk for each observation. (A single random draw
    frozen into the graph looked equivalent but is not: a 1-step consistency policy with one fixed
    draw succeeded 0/20 on PickCube where zeros gave 20/20 and fresh draws 80%.) For fresh noise per
    call, export the module with noise inputs (``export_modules()``) and feed noise from the caller."""

    def __init__(self, inner: ExportModule, noise_shapes: Sequence[tuple[int, ...]] = ()) -> None:
        super().__init__()
        self.inner = inner
        self.obs_keys = list(inner.obs_keys)
        self.n_noise = len(noise_shapes)
        for i, shape in enumerate(noise_shapes):
            self.register_buffer(f"noise_{i}", torch.zeros((1, *shape)))

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        b = obs[self.obs_keys[0]].shape[0]
        noises = [getattr(self, f"noise_{i}").expand(b, *getattr(self, f"noise_{i}").shape[1:])
                  for i in range(self.n_noise)]
        return self.inner(*[obs[k] for k in self.obs_keys], *noises)


class NamedInputs(nn.Module):
    """``g(inputs: dict of batched tensors)`` for a positional :class:`ExportModule`: picks the
    inputs by its ``input_names`` (observation keys plus e.g. ``noisy_action`` and ``timestep``), the
    form ``serl_ctrl.export.onnx_export.export_onnx`` takes for every graph."""

    def __init__(self, inner: ExportModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.inner(*[inputs[name] for name in self.inner.input_names])


# ============================================================================ training


class EMA:
    """Exponential moving average of a module's weights (diffusion_policy's schedule):
    ``decay = min(max_decay, 1 - (1 + step) ** -power)``; buffers are copied."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999) -> None:
        self.power, self.max_decay = power, max_decay
        aux = getattr(model, "_aux", None)
        if aux is not None:
            model._aux = {}  # never copy a teacher or target network into the average
        try:
            self.model = copy.deepcopy(model).eval().requires_grad_(False)
        finally:
            if aux is not None:
                model._aux = aux

    def decay(self, step: int) -> float:
        return 0.0 if self.max_decay <= 0 else min(self.max_decay, 1.0 - (1.0 + step) ** -self.power)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay(step)
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for be, b in zip(self.model.buffers(), model.buffers()):
            be.copy_(b)


def train_policy(policy: ImitationPolicy, dataset: ChunkDataset, steps: int | None = None, *, seed: int = 0,
                 progress: Callable | None = None, log_every: int = 100,
                 callback: Callable[[int, dict], None] | None = None, device: str = "cpu",
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
                 resume: bool = False) -> dict[str, Any]:
    """Train ``policy`` on ``dataset`` for ``steps`` gradient steps; on return it holds the EMA weights.

    AdamW (betas 0.95, 0.999), linear warm-up then cosine decay, gradient clipping, EMA.
    Minibatches, noise and augmentation come from generators seeded by ``seed`` (the global RNGs
    are untouched, and they live on the CPU whatever the device, so a GPU run draws the same
    minibatches), so a run is reproducible on the same machine and thread count. ``device``
    (``auto``, ``cpu``, ``cuda``): where the updates run; the policy is back on the CPU on return.
    ``progress`` is a factory like ``serl_ctrl.utils.progress.progress``. Returns metrics.

    ``checkpoint_every`` > 0 writes a checkpoint (:mod:`serl_ctrl.agents.checkpoint`: atomic,
    no pickle) to ``checkpoint_dir`` every that many steps: weights, EMA, optimiser, learning-rate
    schedule, a distillation target, both generators and the loss history. ``resume`` continues
    from the newest one there, and the run ends exactly as an uninterrupted one would (same
    machine and thread count); a checkpoint of another config or step budget is refused."""
    dev = resolve_device(device)
    policy.to(dev)
    try:
        return _train_policy(policy, dataset, steps, seed=seed, progress=progress, log_every=log_every,
                             callback=callback, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                             resume=resume)
    finally:
        policy.cpu()


class TrainingState:
    """Everything an imitation run needs to continue (``state_dict`` / ``load_state_dict`` in the form
    :func:`serl_ctrl.agents.checkpoint.save_checkpoint` stores)."""

    def __init__(self, policy: ImitationPolicy, opt, sched, ema: EMA | None, gen: torch.Generator,
                 rng: np.random.Generator) -> None:
        self.policy, self.opt, self.sched, self.ema, self.gen, self.rng = policy, opt, sched, ema, gen, rng
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.recent: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        d = {"policy": self.policy.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
             "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state, "step": self.step,
             "history": self.history, "recent": self.recent}
        if self.ema is not None:
            d["ema"] = self.ema.model.state_dict()
        target = self.policy._aux.get("target")
        if target is not None:  # consistency distillation's EMA target (not part of the policy's weights)
            d["target"] = target.state_dict()
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]
        self.step = int(state["step"])
        self.history = [dict(r) for r in state["history"]]
        self.recent = [float(x) for x in state["recent"]]
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
        if "target" in state:
            target = self.policy._target_net()  # built on first use; a resumed run builds it here
            target.load_state_dict(state["target"])


def _train_policy(policy, dataset, steps, *, seed, progress, log_every, callback, checkpoint_dir=None,
                  checkpoint_every=0, resume=False) -> dict[str, Any]:
    from .checkpoint import resume_run, save_checkpoint

    cfg = policy.config
    steps = cfg.train_steps if steps is None else int(steps)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = policy.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.95, 0.999), weight_decay=cfg.weight_decay)
    warm = min(cfg.warmup_steps, max(steps // 10, 1))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(steps - warm, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMA(policy, cfg.ema_power, cfg.ema_max_decay) if cfg.ema_max_decay > 0 else None
    state = TrainingState(policy, opt, sched, ema, gen, rng)
    run_id = {"algo": policy.algo, "steps": steps, "seed": seed, "config": policy.config.to_dict()}
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if (checkpoint_every or resume) and checkpoint_dir is None:
        raise ValueError("checkpoint_every and resume need a checkpoint_dir")
    if resume:
        resume_run(checkpoint_dir, state, run_id)
    history, recent = state.history, state.recent
    bar = progress(total=steps, desc=f"train {policy.algo}", **({"initial": state.step} if state.step else {})) \
        if progress else None
    policy.train()
    start = time.perf_counter()
    try:
        for step in range(state.step, steps):
            batch = policy.batch_to_torch(dataset.sample(cfg.batch_size, rng), gen, augment=True)
            loss, info = policy.compute_loss(batch, gen, step=step, total_steps=steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            policy.after_update(step, steps)
            if ema is not None:
                ema.update(policy, step)
            recent.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                row = {"step": step + 1, "loss": float(np.mean(recent)), "lr": sched.get_last_lr()[0], **info}
                history.append(row)
                recent.clear()
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                if callback is not None:
                    callback(step + 1, row)
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                state.step = step + 1
                save_checkpoint(checkpoint_dir, state, step=step + 1, extra=run_id)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    if ema is not None:
        policy.load_state_dict(ema.model.state_dict())
    policy.eval()
    return {
        "steps": steps,
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "history": history,
        "wall_s": round(wall, 3),
        "steps_per_s": round(steps / wall, 2) if wall > 0 else None,
        "n_samples": len(dataset),
        "n_episodes": dataset.n_episodes,
        "seed": seed,
    }


def train_imitation(algo: str, demos_dir: str | Path, out_dir: str | Path,
                    overrides: Mapping[str, Any] | None = None, steps: int | None = None, seed: int = 0,
                    progress: Callable | None = None, language: bool = False,
                    device: str = "cpu", checkpoint_every: int = 0, resume: bool = False) -> dict[str, Any]:
    """Train an imitation policy on the episodes in ``demos_dir``; write it to ``out_dir``.

    Args:
        algo: ``"diffusion"``, ``"consistency"`` or ``"bc"``.
        overrides: config fields of the algorithm's config class (unknown names are an error
            listing the valid ones). For ``consistency``, ``teacher="path/to/diffusion/policy"``
            selects consistency distillation (``mode="cd"``); otherwise consistency training.
        steps: gradient steps (default: the config's ``train_steps``).
        seed: seeds initialisation, minibatches, noise and augmentation.
        device: where the updates run (``auto``, ``cpu``, ``cuda``, ``cuda:N``); the saved policy
            is CPU float32 either way.
        language: condition the policy on the per-step instruction labels: the observation
            ``instruction_embedding`` (the MiniLM embedding of ``episode.instructions[t]``,
            :mod:`serl_ctrl.language.conditioning`) is added to every step, and the policy's
            metadata lists the instructions it was trained on (``metadata["instructions"]``).
        checkpoint_every: gradient steps between checkpoints in ``out_dir/ckpt`` (0: none);
            ``resume`` continues from the newest (see :func:`train_policy`).

    Returns ``{"metrics": {...}, "checkpoint": "<out_dir>/model.safetensors"}``; the folder also
    holds ``model.json`` (config, shapes, normaliser-free description) and ``metrics.json``.
    """
    from .checkpoint import latest_checkpoint

    ckpt = Path(out_dir) / "ckpt"
    if not resume and latest_checkpoint(ckpt) is not None:
        raise FileExistsError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    policy, dataset = build_imitation(algo, demos_dir, overrides, seed=seed, language=language)
    metrics = train_policy(policy, dataset, steps, seed=seed, progress=progress, device=device,
                           checkpoint_dir=ckpt, checkpoint_every=checkpoint_every, resume=resume)
    saved = save_trained(policy, out_dir, algo, metrics)
    shutil.rmtree(ckpt, ignore_errors=True)  # the model is written: nothing left to resume
    return saved


def build_imitation(algo: str, demos_dir: str | Path, overrides: Mapping[str, Any] | None = None, *,
                    seed: int = 0, language: bool = False) -> tuple[ImitationPolicy, ChunkDataset]:
    """An untrained policy of ``algo`` shaped and normalised for the episodes in ``demos_dir``, and
    its training windows: everything :func:`train_imitation` does before the first gradient step
    (Consistency-AC starts from the same pair). Arguments as in :func:`train_imitation`."""
    from serl_ctrl.data.episodes import load_episodes

    klass = policy_class(algo)
    overrides = dict(overrides or {})
    teacher = None
    if algo == "consistency" and overrides.get("teacher"):
        from .consistency import check_student_overrides
        from .diffusion import DiffusionPolicy

        teacher = DiffusionPolicy.load(overrides["teacher"])
        check_student_overrides(overrides, teacher)
        overrides.setdefault("mode", "cd")
    cfg = klass.config_class.from_dict(overrides)
    episodes = load_episodes(demos_dir)
    metadata: dict[str, Any] = {"demos": str(demos_dir), "train_seed": seed}
    if language:
        from serl_ctrl.language.conditioning import INSTRUCTION_KEY, episode_instructions, with_instruction_embeddings

        metadata.update(instructions=episode_instructions(episodes), instruction_key=INSTRUCTION_KEY,
                        instruction_encoder="all-MiniLM-L6-v2")
        episodes = with_instruction_embeddings(episodes)
        if cfg.obs_keys and INSTRUCTION_KEY not in cfg.obs_keys:
            cfg = cfg.replace(obs_keys=(*cfg.obs_keys, INSTRUCTION_KEY))
    dataset = ChunkDataset(episodes, cfg.obs_keys or None, cfg.n_obs_steps, cfg.horizon)
    extra = {"teacher": teacher} if teacher is not None else {}
    policy = klass.from_dataset(dataset, cfg, seed=seed, metadata=metadata, **extra)
    return policy, dataset


def save_trained(policy: ImitationPolicy, out_dir: str | Path, algo: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``out_dir/model.{safetensors,json}`` and ``metrics.json``; returns what
    :func:`train_imitation` returns (``metrics`` without the loss history, ``checkpoint``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = policy.save(out / "model")  # not "policy": policy.onnx + its card policy.json go beside it
    summary = {k: v for k, v in metrics.items() if k != "history"}
    atomic_write_text(out / "metrics.json", json.dumps({"algo": algo, **metrics}, indent=1) + "\n")
    return {"metrics": summary, "checkpoint": str(path)}


# ============================================================================ evaluation


def obs_mode_for(policy: ImitationPolicy, task: str) -> str:
    """The env observation mode a policy needs: ``state``, ``pixels`` or ``both``."""
    from serl_ctrl.envs.tasks import make_task

    task_keys = set(make_task(task).observation_spaces())
    has_images = bool(policy.spec.image_keys)
    has_task_state = bool(task_keys & set(policy.obs_keys))
    if has_images:
        return "both" if has_task_state else "pixels"
    return "state"


_RUNTIME_CLASS: list[type] = []


def runtime_policy(policy: ImitationPolicy, adaptive_tau: float | None = None, control_hz: float = 10.0,
                   zero_noise: bool = False):
    """Wrap a torch imitation policy in ``serl_ctrl.runtime.policy.Policy`` (history stacking,
    chunk queue, adaptive chunking), the same runtime the ONNX policies run in. With
    ``zero_noise`` every chunk starts from zero sampler noise, as the exported graph does
    (``DeployModule``); otherwise from fresh draws of the policy's generator."""
    from serl_ctrl.runtime.policy import Policy
    from serl_ctrl.runtime.spec import ObsField, PolicySpec

    if not _RUNTIME_CLASS:
        class TorchChunkPolicy(Policy):
            """Runs an ``ImitationPolicy`` in-process (torch) behind the runtime interface."""

            def __init__(self, model: ImitationPolicy, spec: PolicySpec, tau: float | None,
                         zero_noise: bool = False) -> None:
                super().__init__(spec, tau)
                self.model = model
                self.zero_noise = zero_noise

            def _infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
                if self.spec.n_obs_steps == 1:
                    obs = {k: v[:, None] for k, v in obs.items()}
                noise = torch.zeros(self.model.noise_shape(1)) if self.zero_noise else None
                return self.model.predict_chunk(obs, noise)[0].numpy()

        _RUNTIME_CLASS.append(TorchChunkPolicy)
    spec = PolicySpec(
        obs={k: ObsField(tuple(policy.spec.shapes[k]), "uint8" if k in policy.spec.image_keys else "float32")
             for k in policy.obs_keys},
        action_dim=policy.action_dim,
        action_low=tuple(float(x) for x in policy.action_low),
        action_high=tuple(float(x) for x in policy.action_high),
        control_hz=control_hz,
        algo=policy.algo,
        task=policy.metadata.get("task"),
        n_obs_steps=policy.history_len,
        horizon=policy.horizon,
        n_action_steps=policy.n_action_steps,
    )
    return _RUNTIME_CLASS[0](policy, spec, adaptive_tau, zero_noise)


def rollout_success(policy: ImitationPolicy, task: str, backend: str = "mujoco", episodes: int = 50,
                    seed: int = 0, *, adaptive_tau: float | None = None, obs_mode: str | None = None,
                    perturb: Callable[[Any, int, np.random.Generator], bool] | None = None,
                    max_steps: int | None = None, progress: Callable | None = None,
                    env_kwargs: Mapping[str, Any] | None = None, zero_noise: bool = False) -> dict[str, Any]:
    """Success rate of ``policy`` on ``task`` over ``episodes`` seeded episodes.

    Episode ``i`` resets the env with ``seed + i`` and reseeds the policy's noise with the same
    number. Actions come from the runtime's chunk queue (``n_action_steps`` of each chunk; with
    ``adaptive_tau``, SGAC's adaptive chunking). ``zero_noise`` samples every chunk from zero
    noise, as the exported policy does (a DDPM sampler still draws its per-step noise).
    ``perturb(env, step, rng)`` is called before every step and may move objects (it returns True
    when it did). Tasks that report extra
    per-episode facts (``task.episode_summary()``, e.g. collisions of ``avoid``) have them
    averaged into the result.
    """
    from serl_ctrl.envs import make_env

    mode = obs_mode or obs_mode_for(policy, task)
    env = make_env(task, backend=backend, obs=mode, **dict(env_kwargs or {}))
    runner = runtime_policy(policy, adaptive_tau, control_hz=env.unwrapped.control_hz, zero_noise=zero_noise)
    limit = max_steps or env.spec.max_episode_steps
    bar = progress(total=episodes, desc=f"eval {policy.algo} {task}") if progress else None
    records = []
    infer_ms: list[float] = []
    policy.eval()
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            policy.seed(seed + i)
            runner.reset()
            rng = np.random.default_rng(10_000 + seed + i)
            success, steps, perturbed, inferences0 = False, 0, False, runner.inferences
            for steps in range(1, limit + 1):
                if perturb is not None:  # the policy sees the moved object at the next observation
                    perturbed = bool(perturb(env, steps - 1, rng)) or perturbed
                action = runner.act(obs)
                if runner.last_infer_ms is not None:
                    infer_ms.append(runner.last_infer_ms)
                obs, _, terminated, truncated, info = env.step(action)
                success = success or bool(info.get("success"))
                if terminated or truncated:
                    break
            rec = {"seed": seed + i, "success": success, "steps": steps, "perturbed": perturbed,
                   "inferences": runner.inferences - inferences0}
            summary = getattr(env.unwrapped.task, "episode_summary", None)
            if callable(summary):
                rec.update(summary())
            records.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([r['success'] for r in records]):.0%}")
    finally:
        env.close()
        if bar is not None:
            bar.close()
    out: dict[str, Any] = {
        "task": task,
        "backend": backend,
        "episodes": episodes,
        "successes": int(sum(r["success"] for r in records)),
        "success_rate": float(np.mean([r["success"] for r in records])),
        "mean_steps": float(np.mean([r["steps"] for r in records])),
        "inferences_per_episode": float(np.mean([r["inferences"] for r in records])),
        "mean_infer_ms": float(np.mean(infer_ms)) if infer_ms else None,
        "adaptive_tau": adaptive_tau,
        "records": records,
    }
    extra_keys = {k for r in records for k in r} - {"seed", "success", "steps", "perturbed", "inferences"}
    for k in sorted(extra_keys):
        vals = [r[k] for r in records if isinstance(r.get(k), (bool, int, float))]
        if vals:
            out[f"mean_{k}"] = float(np.mean(vals))
    return out
