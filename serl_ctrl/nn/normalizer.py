"""Normalisation statistics that live inside a policy (diffusion_policy style).

A policy owns its :class:`Normalizer`: it is fitted once on the training data, saved with the
weights (as buffers, so ``state_dict`` / safetensors carry it) and applied inside every module the
policy exports. Callers always speak environment units; nothing outside the policy ever needs the
statistics.

Every field is an affine map per feature (the last axis): ``y = x * scale + offset``.

* ``"limits"``: the data's [min, max] maps to [-1, 1] (diffusion_policy's default for actions, so
  that DDPM's ``clip_sample`` to [-1, 1] is the data range). A feature whose range is below
  ``range_eps`` (constant in the data) maps to 0 with scale 1 instead of blowing up.
* ``"gaussian"``: zero mean, unit standard deviation, with the standard deviation floored at
  ``std_min`` (quaternion components or velocities that barely move in the demonstrations would
  otherwise be amplified into noise the policy overfits to).
* ``"identity"``: scale 1, offset 0.

Images are never normalised here: uint8 frames go to the image encoder, which scales them itself.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["FieldNormalizer", "Normalizer", "NORM_MODES"]

NORM_MODES = ("limits", "gaussian", "identity")


class FieldNormalizer(nn.Module):
    """Affine normalisation of one field; ``scale`` and ``offset`` are ``(D,)`` float32 buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("scale", torch.ones(self.dim))
        self.register_buffer("offset", torch.zeros(self.dim))

    @torch.no_grad()
    def fit(self, data: np.ndarray, mode: str = "limits", *, range_eps: float = 1e-4,
            std_min: float = 1e-2) -> "FieldNormalizer":
        """Fit on ``data`` of shape ``(..., D)`` (every leading axis is a sample axis)."""
        if mode not in NORM_MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; valid: {', '.join(NORM_MODES)}")
        x = np.asarray(data, dtype=np.float64).reshape(-1, self.dim)
        if x.shape[0] == 0:
            raise ValueError("cannot fit a normaliser on zero samples")
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot fit a normaliser on data with NaN or inf")
        if mode == "limits":
            lo, hi = x.min(0), x.max(0)
            rng = hi - lo
            const = rng < range_eps
            scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, rng))
            offset = np.where(const, -(lo + hi) / 2.0, -1.0 - lo * scale)
        elif mode == "gaussian":
            mean, std = x.mean(0), x.std(0)
            scale = 1.0 / np.maximum(std, std_min)
            offset = -mean * scale
        else:
            scale, offset = np.ones(self.dim), np.zeros(self.dim)
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        self.offset.copy_(torch.as_tensor(offset, dtype=torch.float32))
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.scale.dtype) * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y.to(self.scale.dtype) - self.offset) / self.scale

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Normalizer(nn.Module):
    """A :class:`FieldNormalizer` per named field (observation keys, ``"action"``).

    ``normalize(dict)`` normalises the keys it knows and passes every other entry (images)
    through unchanged; tensors may have any leading shape, the last axis is the feature axis.
    """

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.fields = nn.ModuleDict({k: FieldNormalizer(d) for k, d in dims.items()})

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.fields.keys())

    def __getitem__(self, key: str) -> FieldNormalizer:
        return self.fields[key]

    def fit(self, data: Mapping[str, np.ndarray], mode: "str | Mapping[str, str]" = "limits",
            **kwargs) -> "Normalizer":
        """Fit every field from ``data[key]``; ``mode`` is one mode or a mode per key."""
        for k, f in self.fields.items():
            if k not in data:
                raise KeyError(f"no data for normaliser field {k!r}; got {sorted(data)}")
            m = mode if isinstance(mode, str) else mode[k]
            f.fit(data[k], m, **kwargs)
        return self

    def normalize(self, batch: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None
                  ) -> dict[str, torch.Tensor]:
        out = dict(batch)
        for k in (self.keys if keys is None else keys):
            if k in out:
                out[k] = self.fields[k].normalize(out[k])
        return out

    def unnormalize(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        for k in self.keys:
            if k in out:
                out[k] = self.fields[k].unnormalize(out[k])
        return out
