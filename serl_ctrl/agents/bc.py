"""Gaussian behaviour cloning of action chunks: the unimodal baseline for diffusion and consistency.

An MLP maps the observation features (the same encoder and normalisation as the generative
policies) to a whole action chunk in normalised units:

* ``loss="mse"``: the chunk itself, trained with squared error (a fixed-variance Gaussian);
* ``loss="tanh_gaussian"``: a mean and log-std per action entry of a tanh-squashed Gaussian,
  trained by maximum likelihood (actions in [-1, 1] after normalisation).

At run time it returns the mean (``tanh(mean)``): deterministic, and, when the demonstrations hold
several modes (pass an obstacle left OR right), their average; that is what this baseline is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from serl_ctrl.nn.mlp import MLP

from .imitation import ConfigError, DeployModule, ExportModule, ImitationConfig, ImitationPolicy

__all__ = ["BCConfig", "BCPolicy", "BCModule"]


@dataclass
class BCConfig(ImitationConfig):
    """Gaussian BC: the shared fields plus the MLP and the likelihood."""

    loss: str = "mse"                             # "mse" or "tanh_gaussian"
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    lr: float = 1e-3
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden_dims = tuple(self.hidden_dims)
        if self.loss not in ("mse", "tanh_gaussian"):
            raise ConfigError(f"loss={self.loss!r}; valid: 'mse', 'tanh_gaussian'")
        if self.log_std_min >= self.log_std_max:
            raise ConfigError("log_std_min must be < log_std_max")


class BCPolicy(ImitationPolicy):
    """Unimodal chunk regression (module docstring)."""

    algo = "bc"
    config_class = BCConfig

    def __init__(self, config: BCConfig, obs_shapes, obs_dtypes, action_dim, action_low, action_high,
                 metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, obs_shapes, obs_dtypes, action_dim, action_low, action_high, metadata)
        out = config.horizon * self.action_dim * (2 if config.loss == "tanh_gaussian" else 1)
        self.net = MLP(self.obs_feature_dim, config.hidden_dims, out, layer_norm=True, act="relu")

    def _heads(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = cond.shape[0]
        shape = (b, self.horizon, self.action_dim)
        out = self.net(cond)
        if self.config.loss == "mse":
            return out.reshape(shape), None
        mean, log_std = out.chunk(2, dim=-1)
        c = self.config
        log_std = c.log_std_min + 0.5 * (c.log_std_max - c.log_std_min) * (torch.tanh(log_std) + 1.0)
        return mean.reshape(shape), log_std.reshape(shape)

    def compute_loss(self, batch, gen, step=0, total_steps=1):
        x0 = batch["action"]
        mean, log_std = self._heads(self.encode_obs(batch["obs"]))
        if log_std is None:
            return (mean - x0).pow(2).mean(), {}
        u = torch.atanh(x0.clamp(-0.999, 0.999))
        nll = 0.5 * ((u - mean) * torch.exp(-log_std)).pow(2) + log_std  # + consts and the tanh Jacobian
        return nll.mean(), {}

    def sample_normalized(self, obs, noise=None, generator=None):
        mean, log_std = self._heads(self.encode_obs(self._last_window(obs)))
        return torch.tanh(mean) if log_std is not None else mean.clamp(-1.0, 1.0)

    def export_modules(self) -> dict[str, nn.Module]:
        """``policy``: ``actions (B, H, A) env units = g(*obs)``; ``deploy``: the same taking a dict."""
        m = BCModule(self)
        return {"policy": m, "deploy": DeployModule(m)}


class BCModule(ExportModule):
    """``actions = g(*obs)`` in env units."""

    def __init__(self, policy: BCPolicy) -> None:
        super().__init__(policy)
        self.input_names = list(self.obs_keys)
        self.output_names = ["actions"]

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        p = self.policy
        return p.unnormalize_action(p.sample_normalized(self._obs(obs)))

    def example_inputs(self, batch: int = 1):
        return tuple(self.obs_examples(batch))
