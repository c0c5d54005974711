"""Diffusion Policy (Chi et al. 2023): action chunks denoised by DDPM, sampled with DDIM.

Training: DDPM with ``num_train_timesteps`` (100) steps, the squared-cosine ("squaredcos_cap_v2")
schedule and epsilon prediction: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``x_0``
the normalised action chunk, loss ``|eps - eps_theta(x_t, t, obs)|^2`` weighted by Min-SNR-5
(``snr_gamma = 5``: ``min(SNR_t, 5) / SNR_t``; 0 gives Chi et al.'s plain MSE). Measured on our
CPU budgets (bench/bench_imitation.py, 4-6k steps, MLP denoiser): Min-SNR-5 lifts PickCube from
46 % to 74 % at 4k steps, and ``prediction_type="sample"`` (predict ``x_0``) trains several times
faster still (PickCube 100 % at 2k steps; Push 68 % vs 8 % for epsilon at 6k steps).
So ``prediction_type`` defaults to ``"sample"``; ``"epsilon"`` (Chi et al.) stays one setting away.
A second reason: with zero initial noise and trailing timesteps, epsilon's first DDIM step divides
by sqrt(abar_99) ~ 5e-4, which magnifies float rounding ~2000x, so an epsilon policy can miss the
1e-5 torch/onnxruntime parity bound that x0-prediction meets with ~7e-7.

Sampling: deterministic DDIM (``eta = 0``, the default) with ``num_inference_steps`` steps, or
stochastic with ``eta > 0``: ``eta = 1`` over all ``num_train_timesteps`` steps is DDPM's ancestral
sampler (Ho et al.; "DDPM-100"), drawing fresh noise at every step from the policy's generator.
Exported graphs are deterministic, so export wants ``eta = 0``. With ``clip_sample``
the predicted ``x_0`` is clipped to [-1, 1] (the normalised action range) and epsilon recomputed
from it (as diffusers does). Timesteps are spaced "trailing" by default (99, 89, ..., 9 for 10
steps: the first step starts from pure noise, which matters at few steps) or "leading" (90, 80,
..., 0: diffusers' default that diffusion_policy used).

Self-guidance (SGAC, So et al. 2025): with ``guidance_w = w > 0`` the noise estimate is
``(1 + w) eps(x, t, s_t) - w eps(x, t, s_{t-1})`` where ``s_{t-1}`` is the observation window one
step older. Both conditions go through the denoiser in ONE batched pass (the batch holds both).
``predict_action`` then wants ``n_obs_steps + 1`` observations (``history_len``); given only
``n_obs_steps`` it repeats the oldest one to form the older window.

The denoiser is the temporal conv U-Net (``denoiser="unet"``) or a small MLP (``"mlp"``, cheaper
for state observations on CPU); observations go through the shared ``ObservationEncoder``
(flattened normalised state, or conv encoders for uint8 camera images) and are stacked over the
history as the global condition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serl_ctrl.nn.unet1d import make_denoiser

from .imitation import ConfigError, DeployModule, ExportModule, ImitationConfig, ImitationPolicy

__all__ = ["DiffusionConfig", "DiffusionPolicy", "make_betas", "ddim_timesteps", "ddim_step", "ddim_sample",
           "DiffusionStepModule", "DiffusionUnrolledModule", "BETA_SCHEDULES"]

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


# ============================================================================ schedule and DDIM


def make_betas(num_timesteps: int, schedule: str = "squaredcos_cap_v2") -> np.ndarray:
    """DDPM betas (float64). ``squaredcos_cap_v2``: Nichol & Dhariwal's cosine schedule,
    ``beta_t = min(1 - abar(t+1)/abar(t), 0.999)`` with ``abar(t) = cos^2((t/T + 0.008)/1.008 * pi/2)``."""
    T = int(num_timesteps)
    if T < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {T}")
    if schedule == "squaredcos_cap_v2":
        f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1.0 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=np.float64)
    if schedule == "linear":
        return np.linspace(1e-4, 2e-2, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(1e-4 ** 0.5, 2e-2 ** 0.5, T, dtype=np.float64) ** 2
    raise ValueError(f"unknown beta schedule {schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "trailing") -> list[int]:
    """The DDIM timesteps, noisiest first. ``num_steps == num_train_timesteps`` gives T-1 .. 0."""
    T, k = int(num_train_timesteps), int(num_steps)
    if not 1 <= k <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}], got {k}")
    if spacing == "leading":
        ratio = T // k
        ts = (np.arange(k) * ratio).round()[::-1]
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / k)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid: 'leading', 'trailing'")
    return [int(t) for t in ts]


def ddim_step(x: torch.Tensor, model_output: torch.Tensor, abar_t: float, abar_prev: float,
              clip_sample: bool = True, prediction_type: str = "epsilon", eta: float = 0.0,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from the model's output (the noise for ``prediction_type="epsilon"``, ``x_0``
    for ``"sample"``): returns ``(x_prev, x0_pred)``. ``eta = 0`` is deterministic; with ``eta > 0``
    the step adds ``sigma * noise``, ``sigma^2 = eta^2 (1 - abar_prev) / (1 - abar_t) (1 - abar_t /
    abar_prev)`` (Song et al., eq. 16; ``eta = 1`` is DDPM's posterior variance)."""
    a_t, b_t = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x - b_t * eps) / a_t
        if clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a_t * x0) / b_t
    else:
        x0 = model_output.clamp(-1.0, 1.0) if clip_sample else model_output
        eps = (x - a_t * x0) / b_t
    var = eta ** 2 * (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev) if eta > 0 else 0.0
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1.0 - abar_prev - var, 0.0)) * eps
    if var > 0:
        if noise is None:
            raise ValueError("a stochastic DDIM step (eta > 0) needs noise")
        x_prev = x_prev + math.sqrt(var) * noise
    return x_prev, x0


def ddim_sample(eps_fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, alphas_cumprod: np.ndarray,
                timesteps: Sequence[int], clip_sample: bool = True, prediction_type: str = "epsilon",
                eta: float = 0.0, noise_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Run DDIM from ``x`` (pure noise at ``timesteps[0]``) to ``x_0``; ``eps_fn(x, t)`` is the model
    (predicting the noise, or ``x_0`` with ``prediction_type="sample"``). With ``eta > 0``,
    ``noise_fn(x)`` draws each step's fresh noise.

    After the last timestep the "previous" ``abar`` is 1 (diffusers' ``set_alpha_to_one``), so the
    result is the model's final ``x_0`` estimate (that step adds no noise)."""
    ts = list(timesteps)
    for i, t in enumerate(ts):
        abar_prev = float(alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        noise = noise_fn(x) if eta > 0 and i + 1 < len(ts) else None
        x, _ = ddim_step(x, eps_fn(x, t), float(alphas_cumprod[t]), abar_prev, clip_sample, prediction_type,
                         eta, noise)
    return x


# ============================================================================ policy


@dataclass
class DiffusionConfig(ImitationConfig):
    """Diffusion Policy: the shared fields (``ImitationConfig``) plus the denoiser and the schedule."""

    denoiser: str = "unet"                       # "unet" (Chi et al.'s temporal conv U-Net) or "mlp"
    down_dims: tuple[int, ...] = (64, 128, 256)  # U-Net channels per level
    kernel_size: int = 5
    n_groups: int = 8
    time_embed_dim: int = 128
    mlp_hidden: tuple[int, ...] = (512, 512, 512)
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    num_inference_steps: int = 10                # DDIM steps at inference
    eta: float = 0.0                             # 0: deterministic DDIM; 1 with 100 steps: DDPM ancestral
    timestep_spacing: str = "trailing"           # "trailing" or "leading" (see module docstring)
    prediction_type: str = "sample"              # "sample" (predict x_0; default, see the module docstring) or "epsilon" (Chi et al.)
    snr_gamma: float = 5.0                       # Min-SNR-gamma loss weighting (Hang et al. 2023); 0 = plain MSE
    clip_sample: bool = True
    guidance_w: float = 0.0                      # SGAC self-guidance weight (0 = off)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.down_dims, self.mlp_hidden = tuple(self.down_dims), tuple(self.mlp_hidden)
        if self.denoiser not in ("unet", "mlp"):
            raise ConfigError(f"denoiser={self.denoiser!r}; valid: 'unet', 'mlp'")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule={self.beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"num_inference_steps={self.num_inference_steps} must be in "
                              f"[1, num_train_timesteps={self.num_train_timesteps}]")
        if self.timestep_spacing not in ("leading", "trailing"):
            raise ConfigError(f"timestep_spacing={self.timestep_spacing!r}; valid: 'leading', 'trailing'")
        if self.prediction_type not in ("epsilon", "sample"):
            raise ConfigError(f"prediction_type={self.prediction_type!r}; valid: 'epsilon', 'sample'")
        if self.guidance_w < 0:
            raise ConfigError(f"guidance_w must be >= 0, got {self.guidance_w}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta={self.eta} must be in [0, 1] (0: deterministic DDIM, 1: DDPM's variance)")


def previous_window(obs: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The observation window one step older than the latest ``n`` (edge-padded if needed)."""
    out = {}
    for k, v in obs.items():
        L = v.shape[1]
        if L >= n + 1:
            out[k] = v[:, L - n - 1: L - 1]
        else:  # only n observations: the oldest stands in for the one before it
            out[k] = torch.cat([v[:, :1], v[:, : n - 1]], dim=1) if n > 1 else v[:, :1]
    return out


class DiffusionPolicy(ImitationPolicy):
    """Diffusion Policy over action chunks (module docstring). Build with :meth:`from_dataset`
    (or ``train_imitation("diffusion", ...)``); ``predict_action(obs_history)`` -> ``(horizon, A)``."""

    algo = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig, obs_shapes, obs_dtypes, action_dim, action_low, action_high,
                 metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, obs_shapes, obs_dtypes, action_dim, action_low, action_high, metadata)
        c = config
        self.denoiser = make_denoiser(c.denoiser, self.action_dim, c.horizon, self.obs_feature_dim,
                                      time_embed_dim=c.time_embed_dim, down_dims=c.down_dims,
                                      kernel_size=c.kernel_size, n_groups=c.n_groups, mlp_hidden=c.mlp_hidden)
        self.alphas_cumprod = np.cumprod(1.0 - make_betas(c.num_train_timesteps, c.beta_schedule))
        self.register_buffer("_abar", torch.as_tensor(self.alphas_cumprod, dtype=torch.float32), persistent=False)

    @property
    def history_len(self) -> int:
        return self.config.n_obs_steps + (1 if self.config.guidance_w > 0 else 0)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch, gen, step=0, total_steps=1):
        x0 = batch["action"]
        b = x0.shape[0]
        cond = self.encode_obs(batch["obs"])
        # drawn on the CPU generator (same numbers on any device), then moved
        t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        ab = self._abar[t].reshape(b, 1, 1)
        xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
        pred = self.denoiser(xt, t, cond)
        eps_pred = self.config.prediction_type == "epsilon"
        target = noise if eps_pred else x0
        if self.config.snr_gamma <= 0:
            return F.mse_loss(pred, target), {}
        snr = ab / (1.0 - ab)
        weight = snr.clamp(max=self.config.snr_gamma) / (snr if eps_pred else 1.0)
        return (weight * (pred - target).pow(2)).mean(), {}

    # ------------------------------------------------------------------ sampling
    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                   cond_prev: torch.Tensor | None = None, w: float = 0.0) -> torch.Tensor:
        """Noise estimate; with ``cond_prev`` and ``w != 0``, SGAC self-guidance in one batched pass:
        ``(1 + w) eps(x, t, cond) - w eps(x, t, cond_prev)``."""
        if cond_prev is None or w == 0:
            return self.denoiser(x, t, cond)
        b = x.shape[0]
        if t.dim() == 0:
            t = t.expand(b)
        e = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond_prev]))
        return (1.0 + w) * e[:b] - w * e[b:]

    def conditions(self, obs: Mapping[str, torch.Tensor], w: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Observation features of the latest window (and of the one before, when guiding),
        encoded in one batched pass."""
        cur = self._last_window(obs)
        if w == 0:
            return self.encode_obs(cur), None
        prev = previous_window(obs, self.config.n_obs_steps)
        both = self.encode_obs({k: torch.cat([cur[k], prev[k]]) for k in cur})
        b = both.shape[0] // 2
        return both[:b], both[b:]

    def sample_normalized(self, obs, noise=None, generator=None, num_inference_steps: int | None = None,
                          guidance_w: float | None = None):
        c = self.config
        w = c.guidance_w if guidance_w is None else float(guidance_w)
        cond, cond_prev = self.conditions(obs, w)
        b = cond.shape[0]
        x = self.make_noise(b, generator) if noise is None else noise
        steps = ddim_timesteps(c.num_train_timesteps, num_inference_steps or c.num_inference_steps, c.timestep_spacing)

        def eps_fn(x, t):
            return self.guided_eps(x, torch.full((b,), t, dtype=torch.long, device=x.device), cond, cond_prev, w)

        def noise_fn(x):  # a CPU generator, as for the initial noise
            return torch.randn(x.shape, generator=generator or self._gen).to(x.device)

        return ddim_sample(eps_fn, x, self.alphas_cumprod, steps, c.clip_sample, c.prediction_type, c.eta, noise_fn)

    # ------------------------------------------------------------------ export
    def _check_deterministic(self) -> None:
        if self.config.eta > 0:
            raise ConfigError(f"eta={self.config.eta}: an exported sampler is deterministic DDIM; "
                              "set eta=0 to export this policy")

    def export_modules(self, num_inference_steps: int | None = None) -> dict[str, nn.Module]:
        """``denoiser``: ``eps = f(noisy_action, timestep, *obs)``; ``unrolled``: ``actions = g(*obs, noise)``
        running a fixed number of DDIM steps (default: the config's) and unnormalising (env units);
        ``deploy``: ``actions = g(obs_dict)`` with fixed noise (see ``DeployModule``). For a sampler
        outside the graph, export ``NamedInputs(denoiser)`` with :meth:`sampler_spec`."""
        self._check_deterministic()
        unrolled = DiffusionUnrolledModule(self, num_inference_steps)
        return {"denoiser": DiffusionStepModule(self), "unrolled": unrolled,
                "deploy": DeployModule(unrolled, [(self.horizon, self.action_dim)])}

    def sampler_spec(self, num_inference_steps: int | None = None):
        """The DDIM constants a runtime needs to sample around the ``runtime_denoiser`` graph
        (:class:`serl_ctrl.runtime.spec.SamplerSpec`): the same timesteps, schedule and action
        unnormalisation as :class:`DiffusionUnrolledModule` with ``num_inference_steps`` steps."""
        from serl_ctrl.runtime.spec import SamplerSpec

        self._check_deterministic()
        c = self.config
        ts = ddim_timesteps(c.num_train_timesteps, num_inference_steps or c.num_inference_steps, c.timestep_spacing)
        norm = self.normalizer["action"]
        return SamplerSpec(timesteps=tuple(ts), alphas_cumprod=tuple(float(self.alphas_cumprod[t]) for t in ts),
                           prediction_type=c.prediction_type, clip_sample=bool(c.clip_sample),
                           action_scale=tuple(float(x) for x in norm.scale),
                           action_offset=tuple(float(x) for x in norm.offset))


class DiffusionStepModule(ExportModule):
    """``out = f(noisy_action (B, H, A) normalised, timestep (B,), *obs)``: one denoiser evaluation,
    the noise (or ``x_0`` with ``prediction_type="sample"``) as DDIM wants it; observations in env
    units (images uint8), normalised inside. With self-guidance the output is the guided estimate
    (observations then carry ``n_obs_steps + 1`` frames), so a sampler outside the graph needs
    nothing but this output and the schedule (:meth:`DiffusionPolicy.sampler_spec`). The timestep
    may be int64 or float32 (the time embedding takes it as a float)."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        super().__init__(policy)
        self.w = float(policy.config.guidance_w)
        self.input_names = ["noisy_action", "timestep", *self.obs_keys]
        self.output_names = ["eps"]

    def forward(self, noisy_action: torch.Tensor, timestep: torch.Tensor, *obs: torch.Tensor) -> torch.Tensor:
        p = self.policy
        cond, cond_prev = p.conditions(self._obs(obs), self.w)
        return p.guided_eps(noisy_action, timestep, cond, cond_prev, self.w)

    def example_inputs(self, batch: int = 1):
        p = self.policy
        return (torch.zeros(batch, p.horizon, p.action_dim), torch.full((batch,), 5, dtype=torch.long),
                *self.obs_examples(batch))


class DiffusionUnrolledModule(ExportModule):
    """``actions (B, H, A) env units = g(*obs, noise (B, H, A))``: ``num_steps`` DDIM steps unrolled with
    their coefficients as constants (no data-dependent control flow), self-guidance included when
    the policy's ``guidance_w`` is set (then observations carry ``n_obs_steps + 1`` frames)."""

    def __init__(self, policy: DiffusionPolicy, num_steps: int | None = None) -> None:
        super().__init__(policy)
        c = policy.config
        self.num_steps = int(num_steps or c.num_inference_steps)
        self.timesteps = ddim_timesteps(c.num_train_timesteps, self.num_steps, c.timestep_spacing)
        self.w = float(c.guidance_w)
        self.input_names = [*self.obs_keys, "noise"]
        self.output_names = ["actions"]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        p = self.policy
        *obs, x = inputs
        cond, cond_prev = p.conditions(self._obs(obs), self.w)
        ab = p.alphas_cumprod
        ts = self.timesteps
        for i, t in enumerate(ts):
            abar_prev = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            eps = p.guided_eps(x, x.new_full((x.shape[0],), float(t)), cond, cond_prev, self.w)
            x, _ = ddim_step(x, eps, float(ab[t]), abar_prev, p.config.clip_sample, p.config.prediction_type)
        return p.unnormalize_action(x)

    def example_inputs(self, batch: int = 1):
        p = self.policy
        return (*self.obs_examples(batch), torch.zeros(batch, p.horizon, p.action_dim))
