"""Denoisers for action chunks: the temporal conv U-Net of Diffusion Policy and a small MLP.

Both map ``(sample (B, H, A), timestep (B,), global_cond (B, G)) -> (B, H, A)``: a noisy action
chunk of ``H`` steps, the diffusion time (an integer DDPM step, or ``250 * ln(sigma)`` for the
consistency models, see ``serl_ctrl.agents.consistency``; any float works) and the observation
features. The output is the predicted noise (DDPM) or the raw network output ``F`` of an EDM /
consistency parameterisation.

``ConditionalUnet1D`` follows Chi et al. (Diffusion Policy, 2023): 1-D convolutions over time,
GroupNorm + Mish, residual blocks whose features are modulated by FiLM (a per-channel scale and
bias predicted from [timestep embedding, observation features]), downsampling by strided conv and
upsampling by transposed conv with skip connections. The defaults here are smaller than the
paper's (64, 128, 256 channels instead of 256, 512, 1024: ~4.5 M instead of ~65 M parameters)
because our machines are CPUs; pass ``down_dims`` to scale up.

``MLPDenoiser`` flattens the chunk and concatenates it with the timestep embedding and the
observation features: for state observations on CPU it is several times cheaper per step and, on
our tasks, as good.

No data-dependent Python control flow: both trace and export with ``torch.onnx.export``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .mlp import MLP

__all__ = ["SinusoidalPosEmb", "Conv1dBlock", "ConditionalResidualBlock1D", "ConditionalUnet1D",
           "MLPDenoiser", "make_denoiser"]


class SinusoidalPosEmb(nn.Module):
    """``(B,)`` float times -> ``(B, dim)`` [sin, cos] features at geometric frequencies."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.to(torch.float32).reshape(-1, 1) * self.freqs.reshape(1, -1)
        return torch.cat([x.sin(), x.cos()], dim=-1)


def _time_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; FiLM (``scale * h + bias`` per channel, from ``cond``) after the first."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int = 5,
                 n_groups: int = 8) -> None:
        super().__init__()
        self.out_ch = out_ch
        self.blocks = nn.ModuleList([Conv1dBlock(in_ch, out_ch, kernel_size, n_groups),
                                     Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)])
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out_ch * 2))
        self.residual_conv = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        film = self.cond_encoder(cond).reshape(cond.shape[0], 2, self.out_ch, 1)
        out = film[:, 0] * out + film[:, 1]
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's temporal U-Net with FiLM conditioning (module docstring).

    Args:
        input_dim: action dimension ``A``.
        global_cond_dim: size of the observation features ``G`` (0: unconditional).
        time_embed_dim: size of the diffusion-step embedding.
        down_dims: channels per level; the horizon must be divisible by ``2 ** (len - 1)``.
    """

    def __init__(self, input_dim: int, global_cond_dim: int, time_embed_dim: int = 128,
                 down_dims: Sequence[int] = (64, 128, 256), kernel_size: int = 5,
                 n_groups: int = 8) -> None:
        super().__init__()
        dims = [input_dim, *down_dims]
        for d in down_dims:
            if d % n_groups:
                raise ValueError(f"U-Net channels {tuple(down_dims)} must be multiples of n_groups={n_groups}")
        self.downsampling = 2 ** (len(down_dims) - 1)
        self.time_emb = _time_mlp(time_embed_dim)
        cond_dim = time_embed_dim + global_cond_dim
        in_out = list(zip(dims[:-1], dims[1:]))
        res = lambda i, o: ConditionalResidualBlock1D(i, o, cond_dim, kernel_size, n_groups)  # noqa: E731

        self.down_modules = nn.ModuleList()
        for ind, (d_in, d_out) in enumerate(in_out):
            last = ind == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                res(d_in, d_out), res(d_out, d_out),
                nn.Conv1d(d_out, d_out, 3, 2, 1) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), res(mid, mid)])
        self.up_modules = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):  # every up level doubles the length again
            self.up_modules.append(nn.ModuleList([
                res(d_out * 2, d_in), res(d_in, d_in), nn.ConvTranspose1d(d_in, d_in, 4, 2, 1)]))
        start = down_dims[0]
        self.final_conv = nn.Sequential(Conv1dBlock(start, start, kernel_size, n_groups),
                                        nn.Conv1d(start, input_dim, 1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        x = sample.transpose(1, 2)  # (B, A, H): channels are the action dimensions
        feat = self.time_emb(timestep.expand(sample.shape[0]) if timestep.dim() == 0 else timestep)
        if global_cond is not None:
            feat = torch.cat([feat, global_cond], dim=-1)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, feat), feat)
            skips.append(x)
            x = down(x)
        for m in self.mid_modules:
            x = m(x, feat)
        for res1, res2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, feat), feat))
        return self.final_conv(x).transpose(1, 2)


class MLPDenoiser(nn.Module):
    """[flattened chunk, timestep embedding, observation features] -> MLP -> chunk."""

    def __init__(self, input_dim: int, horizon: int, global_cond_dim: int, time_embed_dim: int = 128,
                 hidden_dims: Sequence[int] = (512, 512, 512)) -> None:
        super().__init__()
        self.horizon, self.input_dim = horizon, input_dim
        self.time_emb = _time_mlp(time_embed_dim)
        self.net = MLP(horizon * input_dim + time_embed_dim + global_cond_dim, tuple(hidden_dims),
                       horizon * input_dim, layer_norm=True, act="silu")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        b = sample.shape[0]
        feat = self.time_emb(timestep.expand(b) if timestep.dim() == 0 else timestep)
        parts = [sample.reshape(b, -1), feat]
        if global_cond is not None:
            parts.append(global_cond)
        return self.net(torch.cat(parts, dim=-1)).reshape(b, self.horizon, self.input_dim)


def make_denoiser(kind: str, action_dim: int, horizon: int, cond_dim: int, *, time_embed_dim: int = 128,
                  down_dims: Sequence[int] = (64, 128, 256), kernel_size: int = 5, n_groups: int = 8,
                  mlp_hidden: Sequence[int] = (512, 512, 512)) -> nn.Module:
    """``"unet"`` (:class:`ConditionalUnet1D`) or ``"mlp"`` (:class:`MLPDenoiser`)."""
    if kind == "unet":
        net = ConditionalUnet1D(action_dim, cond_dim, time_embed_dim, down_dims, kernel_size, n_groups)
        if horizon % net.downsampling:
            raise ValueError(f"horizon={horizon} must be divisible by {net.downsampling} for a U-Net with "
                             f"{len(down_dims)} levels (down_dims={tuple(down_dims)})")
        return net
    if kind == "mlp":
        return MLPDenoiser(action_dim, horizon, cond_dim, time_embed_dim, mlp_hidden)
    raise ValueError(f"unknown denoiser {kind!r}; valid: 'unet', 'mlp'")
