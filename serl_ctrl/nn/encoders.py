"""Observation handling and image encoders (DrQ style).

* ``ObsSpec`` (numpy only, defined in ``serl_ctrl.data.replay``) reads a gymnasium observation
  space: a ``Box``, or a ``Dict`` of ``Box``. Keys whose Box is ``uint8`` with 3 dims are camera
  images in HWC layout; every other key is state, flattened and concatenated in sorted key order
  (``flat_state``). A plain ``Box`` is the single key ``"obs"``.
* ``ObservationEncoder`` maps a dict of tensors to one feature vector: with no images it is the
  flattened state (no parameters, as RLPD); with images, one ``ConvEncoder`` per camera (sorted key
  order) plus a proprioception embedding of the state. Optionally the state is first normalised
  (``normalize_state``) with statistics that are fitted once and then live in the encoder's
  buffers, so checkpoints, actor weight updates and exported graphs all carry them.
* ``random_shift`` is DrQ's augmentation: replicate-pad by ``pad`` and crop back at a random
  offset, per sample, as one gather (no Python loop over samples). It is applied by the agent to
  batches, never inside the encoder, so exported policies contain no augmentation.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from serl_ctrl.data.replay import ObsSpec
from serl_ctrl.nn.normalizer import FieldNormalizer

__all__ = ["ObsSpec", "obs_to_torch", "dict_to_torch", "flat_state", "SpatialSoftmax",
           "ConvEncoder", "ObservationEncoder", "random_shift"]


def obs_to_torch(spec: ObsSpec, obs: Any,
                 device: "torch.device | str" = "cpu") -> Dict[str, torch.Tensor]:
    """Batched numpy/tensor observation (as the space gives it) -> dict of tensors keyed like
    ``spec.keys`` (images stay uint8, state becomes float32)."""
    return dict_to_torch(spec, spec.as_dict(obs), device)


def dict_to_torch(spec: ObsSpec, d: Mapping[str, Any],
                  device: "torch.device | str" = "cpu") -> Dict[str, torch.Tensor]:
    """Like ``obs_to_torch`` for an observation already keyed like ``spec.keys``."""
    out = {}
    for k in spec.keys:
        v = d[k]
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
        if k not in spec.image_keys:
            t = t.to(torch.float32)
        out[k] = t.to(device)
    return out


def flat_state(spec: ObsSpec, obs: Mapping[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """Concatenate the state keys (sorted) into ``(B, state_dim)``; None if there are none."""
    if not spec.state_keys:
        return None
    parts = [obs[k].reshape(obs[k].shape[0], -1).to(torch.float32) for k in spec.state_keys]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class SpatialSoftmax(nn.Module):
    """Per channel, the softmax-weighted mean (x, y) position in [-1, 1].

    ``(B, C, H, W) -> (B, 2C)``."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width),
                                indexing="ij")
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1),
                             persistent=False)  # (H*W, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        attn = torch.softmax(x.reshape(b, c, -1), dim=-1)          # (B, C, HW)
        return torch.matmul(attn, self.pos.to(attn.dtype)).reshape(b, 2 * c)


class ConvEncoder(nn.Module):
    """DrQ's encoder for one camera: uint8 ``(B, H, W, C)`` -> ``(B, feature_dim)``.

    ``num_layers`` 3x3 convs with ``channels`` filters (the first ``strided_layers`` with stride
    ``first_stride``, the rest 1), ReLU, then spatial softmax or flatten, Linear, LayerNorm,
    tanh."""

    def __init__(self, image_shape: Tuple[int, int, int], *, channels: int = 32,
                 num_layers: int = 4, first_stride: int = 2, strided_layers: int = 1,
                 pooling: str = "spatial_softmax", feature_dim: int = 50) -> None:
        super().__init__()
        h, w, c = image_shape
        convs = []
        for i in range(num_layers):
            convs.append(nn.Conv2d(c if i == 0 else channels, channels, 3,
                                   stride=first_stride if i < strided_layers else 1))
        self.convs = nn.ModuleList(convs)
        with torch.no_grad():
            probe = torch.zeros(1, c, h, w)
            for conv in self.convs:
                probe = conv(probe)
        _, oc, oh, ow = probe.shape
        if oh < 1 or ow < 1:
            raise ValueError(f"image {image_shape} is too small for {num_layers} conv layers")
        if pooling == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(oh, ow)
            pooled = 2 * oc
        elif pooling == "flatten":
            self.pool = nn.Flatten()
            pooled = oc * oh * ow
        else:
            raise ValueError(f"unknown pooling {pooling!r}; use 'spatial_softmax' or 'flatten'")
        self.proj = nn.Linear(pooled, feature_dim)
        self.norm = nn.LayerNorm(feature_dim)
        self.out_dim = feature_dim

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0) - 0.5
        for conv in self.convs:
            x = torch.relu_(conv(x))  # in place: conv output is fresh (~9% faster on CPU)
        return torch.tanh(self.norm(self.proj(self.pool(x))))


class ObservationEncoder(nn.Module):
    """Dict of tensors -> feature vector ``(B, out_dim)`` (see module docstring)."""

    #: normalised state features are clipped to this many standard deviations, so a value far
    #: outside the fitting data (a new velocity regime online) cannot saturate the first layer
    STATE_CLIP = 10.0

    def __init__(self, spec: ObsSpec, enc_cfg: Any = None, *, normalize_state: bool = False) -> None:
        super().__init__()
        from serl_ctrl.agents.config import EncoderConfig

        cfg = enc_cfg if enc_cfg is not None else EncoderConfig()
        self.spec = spec
        self.image_keys = spec.image_keys
        self.cams = nn.ModuleList(
            ConvEncoder(spec.shapes[k], channels=cfg.channels, num_layers=cfg.num_layers,
                        first_stride=cfg.first_stride, strided_layers=cfg.strided_layers,
                        pooling=cfg.pooling,
                        feature_dim=cfg.feature_dim) for k in spec.image_keys)
        sd = spec.state_dim
        if spec.image_keys and sd > 0 and cfg.proprio_dim > 0:
            self.proprio: Optional[nn.Module] = nn.Sequential(
                nn.Linear(sd, cfg.proprio_dim), nn.LayerNorm(cfg.proprio_dim), nn.Tanh())
            pdim = cfg.proprio_dim
        else:
            self.proprio = None
            pdim = sd
        self.out_dim = sum(c.out_dim for c in self.cams) + pdim
        if self.out_dim == 0:
            raise ValueError("observation space has no features")
        self.state_norm: Optional[FieldNormalizer] = None
        if normalize_state and sd > 0:
            self.state_norm = FieldNormalizer(sd)
            self.register_buffer("state_norm_fitted", torch.zeros(()))

    @property
    def needs_state_stats(self) -> bool:
        """True while a state normaliser exists but has not been fitted yet."""
        return self.state_norm is not None and not bool(self.state_norm_fitted)

    def fit_state_normalizer(self, states: np.ndarray, std_min: float = 1e-2) -> None:
        """Fit zero mean / unit std per state feature on ``states`` ``(N, state_dim)``, flattened
        as ``flat_state`` orders them; the standard deviation is floored at ``std_min`` (1 cm for
        positions) so features that barely moved in the data are not blown up into noise."""
        if self.state_norm is None:
            raise RuntimeError("this encoder was built without normalize_state")
        self.state_norm.fit(states, "gaussian", std_min=std_min)
        self.state_norm_fitted.fill_(1.0)

    @property
    def has_params(self) -> bool:
        return any(True for _ in self.parameters())

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = [cam(obs[k]) for k, cam in zip(self.image_keys, self.cams)]
        state = flat_state(self.spec, obs)
        if state is not None:
            if self.state_norm is not None:
                state = self.state_norm.normalize(state).clamp(-self.STATE_CLIP, self.STATE_CLIP)
            feats.append(self.proprio(state) if self.proprio is not None else state)
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)


def random_shift(images: torch.Tensor, pad: int, generator: Optional[torch.Generator] = None,
                 return_shifts: bool = False):
    """DrQ random shift of a batch of HWC images (any dtype, uint8 included).

    Equivalent to ``F.pad(x, (pad,)*4, mode="replicate")`` followed by a random ``H x W`` crop per
    sample: ``out[b, i, j] = x[b, clamp(i + dy[b]), clamp(j + dx[b])]`` with ``dy, dx`` uniform in
    ``[-pad, pad]``. One ``index_select`` for the whole batch.

    Returns the shifted images (same shape/dtype), and ``(B, 2)`` shifts ``(dy, dx)`` if asked."""
    b, h, w, c = images.shape
    dev = images.device
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(dev) - pad
    if pad == 0:
        out = images
    else:
        rows = (torch.arange(h, device=dev).unsqueeze(0) + shifts[:, :1]).clamp_(0, h - 1)
        cols = (torch.arange(w, device=dev).unsqueeze(0) + shifts[:, 1:]).clamp_(0, w - 1)
        base = (torch.arange(b, device=dev) * (h * w)).view(b, 1, 1)
        idx = base + rows.view(b, h, 1) * w + cols.view(b, 1, w)           # (B, H, W)
        out = images.reshape(b * h * w, c).index_select(0, idx.reshape(-1)).view(b, h, w, c)
    return (out, shifts) if return_shifts else out
