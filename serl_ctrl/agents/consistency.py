"""Consistency policies: action chunks in 1 to a few network evaluations.

A consistency model ``f(x, sigma, obs)`` maps a noisy action chunk at any noise level straight
to its clean end point on the probability-flow ODE (Song et al. 2023). As a policy it samples a
chunk in ONE step (``f(sigma_max * z, sigma_max)``) or refines it in a few (re-noise to a smaller
sigma, denoise again): Consistency Policy (Prasad et al. 2024), Consistency-BC / -AC (Ding & Jin
2024).

Parameterisation (EDM / consistency models): ``f = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x,
250 ln sigma, obs)`` with ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)``, ``c_out = (sigma -
sigma_min) sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)`` (``sd = sigma_data``), so
``f(x, sigma_min) = x`` exactly. ``F`` is the same denoiser as the diffusion policy (temporal U-Net
or MLP) and observations go through the same encoder. Noise levels follow Karras et al.:
``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

Two ways to train (``mode``):

* ``"ct"``: consistency training, no teacher (Consistency-BC). The improved recipe of Song &
  Dhariwal (2023): the target is the online network under stop-gradient (``target_ema = 0``), the
  number of discretisation steps doubles from ``ct_s0`` to ``ct_s1`` over training, the pair of
  adjacent noise levels is drawn from a log-normal (``p_mean``, ``p_std``), each pair is weighted
  by ``1 / (sigma_{i+1} - sigma_i)`` and compared with the pseudo-Huber distance. ``ct_s1`` is 40 by
  default (iCT used 1280 over 400k steps; we train a few thousand). ``dsm_weight > 0`` adds a
  denoising term ``|f(x_sigma, sigma) - x_0|^2`` (as CTM / Consistency Policy do): faster to fit
  (PickCube 1-step 74 % -> 90 % at 4k steps) but it pulls 1-step samples toward the mean of the
  modes, so it is off by default.
* ``"cd"``: consistency distillation from a trained :class:`DiffusionPolicy` (Prasad et al.). The
  student's noise levels are the teacher's DDPM timesteps every ``cd_stride`` (10) as
  variance-exploding sigmas, ``sigma(t) = sqrt((1 - abar_t) / abar_t)``. From a level ``hi`` the
  teacher's deterministic DDIM steps run down to a level ``lo`` and the student's ``f(x_hi)`` is
  compared with the target ``f_target(x_lo)``. ``cd_jump = 1`` is Song et al.'s CD (adjacent levels,
  an EMA target, ``target_ema`` 0.95); ``cd_jump = 0`` (the default) runs the teacher to the
  boundary, where ``f(x, sigma_min) = x``, so the target is the teacher's own ODE solution from
  ``x_hi``: CTM's soft consistency matching at its far end (Kim et al. 2024, which Consistency
  Policy uses), or Luhman & Luhman's distillation at every noise level. Adjacent-level CD compounds
  its per-level errors along the chain: on Push (state, 4,000 steps) its 1-step chunks were further
  from the teacher's ODE solution (mean squared error 0.08-0.10) than the teacher's own 1-step
  denoiser (0.033); regressing the ODE solution reached 0.015. ``cd_student = "teacher"`` (the
  default) starts the student as a copy of the teacher's network in the teacher's coordinates
  (``F`` sees ``x / sqrt(1 + sigma^2)`` and the DDPM timestep of ``sigma`` and predicts what the
  teacher predicts, ``f = c_skip x + (1 - c_skip) x0_hat``), as Song et al. initialise CD from the
  pretrained model: distillation starts from the teacher's DDIM-1 sampler instead of noise. There
  ``c_skip`` falls off on the scale of ``sigma_min`` instead of ``sigma_data`` (``f(x, sigma_min) = x``
  still): with ``sigma_data``'s, ``f`` kept 90 % of the noisy input at sigma 0.19, the student had to
  amplify its output tenfold to cancel it, and 3-step sampling fell to 42 % on Push against 76 %.
  ``"scratch"`` uses the EDM parameterisation above with fresh weights. The student reuses the
  teacher's normalisation statistics.

Sampling noise levels (``sample_sigmas``): ``sigma_max`` first; for more steps the defaults are
geometric between 0.8 and 0.1, where action chunks normalised to [-1, 1] still carry signal
(Karras spacing from ``sigma_max = 80`` would waste the second step on near-pure noise).

:class:`ConsistencyAC` adds Ding & Jin's actor-critic: the consistency actor is trained with the
consistency (BC) loss plus ``-eta * Q(s, a_0) / mean|Q|`` through a one-step sample, against the
SAC agent's ``EnsembleCritic`` trained by TD on (offline or online) transitions.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from serl_ctrl.nn.unet1d import make_denoiser

from .diffusion import DiffusionPolicy, make_betas
from .imitation import ConfigError, DeployModule, ExportModule, ImitationConfig, ImitationPolicy

__all__ = ["ConsistencyConfig", "ConsistencyPolicy", "ConsistencyModule", "ConsistencyFnModule", "karras_sigmas",
           "edm_scalings", "ct_num_scales", "schedule_sigmas", "teacher_sigmas", "multistep_sample", "ConsistencyAC",
           "check_student_overrides"]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """``n`` Karras noise levels, ascending from ``sigma_min`` to ``sigma_max`` (float64)."""
    if n < 2:
        raise ValueError(f"need at least 2 noise levels, got {n}")
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + ramp * (hi - lo)) ** rho


def edm_scalings(sigma: torch.Tensor, sigma_min: float, sigma_data: float):
    """``(c_skip, c_out, c_in)`` of the consistency-model parameterisation (module docstring)."""
    sd2 = sigma_data ** 2
    c_skip = sd2 / ((sigma - sigma_min) ** 2 + sd2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma ** 2 + sd2).sqrt()
    c_in = 1.0 / (sigma ** 2 + sd2).sqrt()
    return c_skip, c_out, c_in


def ct_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """Improved CT's discretisation curriculum: ``min(s0 * 2^floor(k / K'), s1) + 1`` noise levels."""
    doublings = int(math.floor(math.log2(max(s1 // s0, 1)))) + 1
    k_prime = max(total_steps // doublings, 1)
    return int(min(s0 * 2 ** (step // k_prime), s1)) + 1


@dataclass
class ConsistencyConfig(ImitationConfig):
    """Consistency policy: shared fields, the denoiser, the noise levels and the training recipe."""

    mode: str = "ct"                             # "ct" (no teacher) or "cd" (distil a DiffusionPolicy)
    denoiser: str = "unet"
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    time_embed_dim: int = 128
    mlp_hidden: tuple[int, ...] = (512, 512, 512)
    sigma_min: float = 0.002                     # cd: replaced by the teacher's smallest sigma
    sigma_max: float = 80.0                      # cd: replaced by the teacher's largest sigma
    sigma_data: float = 0.5
    rho: float = 7.0
    num_inference_steps: int = 1
    sample_sigmas: tuple[float, ...] = ()        # explicit sampling sigmas, noisiest first (() = default)
    ct_s0: int = 10                              # ct curriculum: initial number of discretisation steps
    ct_s1: int = 40                              # ct curriculum: final number (iCT: 1280, for ~400k steps)
    p_mean: float = -1.1                         # ct: log-normal over noise levels
    p_std: float = 2.0
    loss: str = "pseudo_huber"                   # "pseudo_huber" or "l2"
    dsm_weight: float = 0.0                      # weight of an auxiliary denoising loss |f(x_sigma) - x_0|^2
    target_ema: float = -1.0                     # EMA of the target network; -1 = auto (ct 0, cd 0.95, none with cd_jump 0)
    cd_stride: int = 10                          # cd: teacher timesteps between adjacent student sigmas
    cd_jump: int = 0                             # cd: teacher steps per target: 0 = down to the boundary, k = 1..k
    cd_student: str = "teacher"                  # cd: "teacher" (start from the teacher's weights, in its coordinates) or "scratch"
    cd_prediction_type: str = "sample"           # cd: the teacher's prediction type (copied from the teacher)
    cd_num_train_timesteps: int = 100            # cd: the teacher's schedule (copied from the teacher)
    cd_beta_schedule: str = "squaredcos_cap_v2"
    teacher: str = ""                            # cd: path of the teacher policy (train_imitation)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.down_dims, self.mlp_hidden = tuple(self.down_dims), tuple(self.mlp_hidden)
        self.sample_sigmas = tuple(float(s) for s in self.sample_sigmas)
        if self.mode not in ("ct", "cd"):
            raise ConfigError(f"mode={self.mode!r}; valid: 'ct' (consistency training), 'cd' (distillation)")
        if self.denoiser not in ("unet", "mlp"):
            raise ConfigError(f"denoiser={self.denoiser!r}; valid: 'unet', 'mlp'")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.sample_sigmas and len(self.sample_sigmas) != self.num_inference_steps:
            raise ConfigError(f"sample_sigmas has {len(self.sample_sigmas)} entries; num_inference_steps="
                              f"{self.num_inference_steps}")
        if self.loss not in ("pseudo_huber", "l2"):
            raise ConfigError(f"loss={self.loss!r}; valid: 'pseudo_huber', 'l2'")
        if not (self.target_ema == -1.0 or 0.0 <= self.target_ema < 1.0):
            raise ConfigError(f"target_ema must be -1 (auto) or in [0, 1), got {self.target_ema}")
        if self.dsm_weight < 0:
            raise ConfigError(f"dsm_weight must be >= 0, got {self.dsm_weight}")
        if self.ct_s0 < 1 or self.ct_s1 < self.ct_s0 or self.cd_stride < 1:
            raise ConfigError("need 1 <= ct_s0 <= ct_s1 and cd_stride >= 1")
        if self.cd_student not in ("teacher", "scratch"):
            raise ConfigError(f"cd_student={self.cd_student!r}; valid: 'teacher', 'scratch'")
        if self.cd_prediction_type not in ("sample", "epsilon"):
            raise ConfigError(f"cd_prediction_type={self.cd_prediction_type!r}; valid: 'sample', 'epsilon'")
        if self.cd_jump < 0:
            raise ConfigError(f"cd_jump must be >= 0 (0 = down to the boundary), got {self.cd_jump}")

    @property
    def teacher_coordinates(self) -> bool:
        """Whether ``F`` is a teacher-shaped denoiser (distillation that starts from the teacher)."""
        return self.mode == "cd" and self.cd_student == "teacher"

    @property
    def target_decay(self) -> float:
        if self.target_ema >= 0:
            return self.target_ema
        return 0.0 if self.mode == "ct" or self.cd_jump == 0 else 0.95


class ConsistencyPolicy(ImitationPolicy):
    """Consistency policy over action chunks (module docstring).

    ``teacher`` (a trained :class:`DiffusionPolicy`) is required for ``mode="cd"`` training only;
    it is not saved with the student. ``predict_action(obs_history, noise)`` takes ``noise`` of
    shape ``(num_inference_steps, horizon, A)``."""

    algo = "consistency"
    config_class = ConsistencyConfig

    def __init__(self, config: ConsistencyConfig, obs_shapes, obs_dtypes, action_dim, action_low, action_high,
                 metadata: Mapping[str, Any] | None = None, teacher: DiffusionPolicy | None = None) -> None:
        if teacher is not None:
            if config.mode != "cd":
                config = config.replace(mode="cd")
            sig = teacher_sigmas(teacher, config.cd_stride)[1]
            tc = teacher.config
            config = config.replace(sigma_min=float(sig[0]), sigma_max=float(sig[-1]),
                                    cd_num_train_timesteps=tc.num_train_timesteps, cd_beta_schedule=tc.beta_schedule,
                                    cd_prediction_type=tc.prediction_type)
            if config.cd_student == "teacher":  # the student is a copy of the teacher's network
                config = config.replace(denoiser=tc.denoiser, down_dims=tc.down_dims, kernel_size=tc.kernel_size,
                                        n_groups=tc.n_groups, time_embed_dim=tc.time_embed_dim,
                                        mlp_hidden=tc.mlp_hidden)
        super().__init__(config, obs_shapes, obs_dtypes, action_dim, action_low, action_high, metadata)
        c = config
        self.denoiser = make_denoiser(c.denoiser, self.action_dim, c.horizon, self.obs_feature_dim,
                                      time_embed_dim=c.time_embed_dim, down_dims=c.down_dims,
                                      kernel_size=c.kernel_size, n_groups=c.n_groups, mlp_hidden=c.mlp_hidden)
        if c.teacher_coordinates:  # log sigma of every teacher timestep, to map a sigma to its (fractional) timestep
            log_sig = np.log(schedule_sigmas(c.cd_num_train_timesteps, c.cd_beta_schedule)[1])
            self.register_buffer("_teacher_log_sigma", torch.as_tensor(log_sig, dtype=torch.float32), persistent=False)
        if teacher is not None:
            self._check_teacher(teacher)
            if c.teacher_coordinates:
                self.denoiser.load_state_dict(teacher.denoiser.state_dict())
            self._aux["teacher"] = teacher.eval().requires_grad_(False)
            self.metadata["teacher"] = teacher.metadata.get("path", "")
        self._aux["target"] = None

    @classmethod
    def from_description(cls, desc):
        cfg = dict(desc["config"])
        if cfg.get("mode") == "cd" and "cd_student" not in cfg:  # files written before cd_student existed
            desc = {**desc, "config": {**cfg, "cd_student": "scratch"}}
        return super().from_description(desc)

    # ------------------------------------------------------------------ model
    def _check_teacher(self, teacher: DiffusionPolicy) -> None:
        t, c = teacher.config, self.config
        if (t.n_obs_steps, t.horizon) != (c.n_obs_steps, c.horizon) or teacher.obs_keys != self.obs_keys \
                or teacher.action_dim != self.action_dim:
            raise ValueError("the teacher must have the student's observation keys, n_obs_steps, horizon and "
                             f"action_dim (teacher: {teacher.obs_keys}, {t.n_obs_steps}, {t.horizon}, "
                             f"{teacher.action_dim})")

    def fit_normalizers(self, dataset) -> None:
        teacher = self._aux.get("teacher")
        if teacher is None:
            super().fit_normalizers(dataset)
            return
        self.normalizer.load_state_dict(teacher.normalizer.state_dict())  # same normalised action space
        if teacher.encoder.has_params:  # pixels: start from the teacher's image encoder
            self.encoder.load_state_dict(teacher.encoder.state_dict())

    def consistency_fn(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                       net: nn.Module | None = None) -> torch.Tensor:
        """``f(x, sigma, cond)``; ``sigma`` is ``(B,)`` (or a 0-d tensor) in the action's units."""
        c = self.config
        b = x.shape[0]
        if sigma.dim() == 0:
            sigma = sigma.expand(b)
        s = sigma.to(x.dtype).reshape(b, 1, 1)
        if c.teacher_coordinates:  # c_skip falls off on the scale of sigma_min (module docstring)
            c_skip = edm_scalings(s, c.sigma_min, c.sigma_min)[0]
            return c_skip * x + (1.0 - c_skip) * self._teacher_x0(x, sigma.to(x.dtype), cond, net or self.denoiser)
        c_skip, c_out, c_in = edm_scalings(s, c.sigma_min, c.sigma_data)
        out = (net or self.denoiser)(c_in * x, 250.0 * torch.log(sigma.to(x.dtype)), cond)
        return c_skip * x + c_out * out

    def _teacher_x0(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, net: nn.Module) -> torch.Tensor:
        """The clean chunk predicted by a teacher-shaped network at noise level ``sigma`` (``(B,)``).

        The teacher sees the variance-preserving variable ``x / sqrt(1 + sigma^2)`` (``abar = 1 / (1 +
        sigma^2)``) and the DDPM timestep of ``sigma``, interpolated linearly in log sigma between
        the teacher's integer timesteps (exact on its grid, and a few elementwise ops in ONNX)."""
        log_sig = self._teacher_log_sigma
        frac = (torch.log(sigma).unsqueeze(-1) - log_sig[:-1]) / (log_sig[1:] - log_sig[:-1])
        t = frac.clamp(0.0, 1.0).sum(-1)
        s = sigma.reshape(-1, 1, 1)
        out = net(x / (1.0 + s * s).sqrt(), t, cond)
        return x - s * out if self.config.cd_prediction_type == "epsilon" else out

    @property
    def sample_sigmas(self) -> list[float]:
        """The sampling noise levels for ``num_inference_steps``, noisiest first (module docstring)."""
        c = self.config
        if c.sample_sigmas:
            return list(c.sample_sigmas)
        k = c.num_inference_steps
        rest = list(np.geomspace(0.8, 0.1, k - 1)) if k > 2 else ([0.8] if k == 2 else [])
        sig = [c.sigma_max] + [min(max(float(s), c.sigma_min * 1.01), c.sigma_max) for s in rest]
        if c.mode == "cd":  # evaluate the student where it was trained: snap to the teacher's grid
            grid = schedule_sigmas(c.cd_num_train_timesteps, c.cd_beta_schedule, c.cd_stride)[1]
            sig = [c.sigma_max] + [float(grid[np.argmin(np.abs(np.log(grid) - math.log(s)))]) for s in sig[1:]]
        return [float(s) for s in sig]

    def noise_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.config.num_inference_steps, self.horizon, self.action_dim)

    def sample_normalized(self, obs, noise=None, generator=None):
        cond = self.encode_obs(self._last_window(obs))
        b = cond.shape[0]
        z = self.make_noise(b, generator) if noise is None else noise
        return multistep_sample(self, cond, z, self.sample_sigmas)

    # ------------------------------------------------------------------ training
    def _target_net(self) -> nn.Module:
        if self.config.target_decay == 0.0:
            return self.denoiser
        if self._aux.get("target") is None:
            self._aux["target"] = copy.deepcopy(self.denoiser).requires_grad_(False)
        return self._aux["target"]

    def after_update(self, step: int, total_steps: int) -> None:
        d = self.config.target_decay
        if d > 0:
            target = self._target_net()
            with torch.no_grad():
                for pt, p in zip(target.parameters(), self.denoiser.parameters()):
                    pt.mul_(d).add_(p.detach(), alpha=1.0 - d)

    def _distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = (pred - target).reshape(pred.shape[0], -1)
        if self.config.loss == "l2":
            return diff.pow(2).mean(-1)
        c = 0.00054 * math.sqrt(diff.shape[1])
        return (diff.pow(2).sum(-1) + c * c).sqrt() - c

    def compute_loss(self, batch, gen, step=0, total_steps=1):
        if self.config.mode == "cd":
            return self._cd_loss(batch, gen)
        return self._ct_loss(batch, gen, step, total_steps)

    def _ct_loss(self, batch, gen, step, total_steps):
        c = self.config
        x0 = batch["action"]
        b = x0.shape[0]
        cond = self.encode_obs(batch["obs"])
        n = ct_num_scales(step, total_steps, c.ct_s0, c.ct_s1)
        sig = karras_sigmas(n, c.sigma_min, c.sigma_max, c.rho)
        logs = np.log(sig)
        cdf = np.array([math.erf((v - c.p_mean) / (math.sqrt(2.0) * c.p_std)) for v in logs])
        probs = torch.as_tensor(np.maximum(cdf[1:] - cdf[:-1], 1e-12))
        i = torch.multinomial(probs, b, replacement=True, generator=gen)
        sig_t = torch.as_tensor(sig, dtype=torch.float32)
        s_lo, s_hi = sig_t[i].to(x0.device), sig_t[i + 1].to(x0.device)
        z = torch.randn(x0.shape, generator=gen).to(x0.device)
        pred = self.consistency_fn(x0 + s_hi.view(b, 1, 1) * z, s_hi, cond)
        with torch.no_grad():
            tcond = cond.detach()
            target = self.consistency_fn(x0 + s_lo.view(b, 1, 1) * z, s_lo, tcond, self._target_net())
        weight = 1.0 / (s_hi - s_lo)
        loss = (weight * self._distance(pred, target)).mean()
        info = {"num_scales": float(n)}
        if c.dsm_weight > 0:  # CTM / Consistency Policy style: also regress the clean chunk directly
            dsm = (pred - x0).pow(2).mean()
            loss = loss + c.dsm_weight * dsm
            info["dsm"] = float(dsm.detach())
        return loss, info

    def _cd_loss(self, batch, gen):
        teacher: DiffusionPolicy | None = self._aux.get("teacher")
        if teacher is None:
            raise RuntimeError("consistency distillation (mode='cd') needs a teacher: build the policy with "
                               "teacher=DiffusionPolicy.load(...) or pass teacher=<path> to train_imitation")
        c = self.config
        x0 = batch["action"]
        b = x0.shape[0]
        dev = x0.device
        ts, sig = teacher_sigmas(teacher, c.cd_stride)
        n = len(ts)
        # the start level hi in 1..n-1; the end level lo = 0 (cd_jump = 0: the teacher's whole ODE) or
        # hi - jump with jump uniform in 1..min(cd_jump, hi)
        hi = torch.randint(1, n, (b,), generator=gen)
        if c.cd_jump == 0:
            jump = hi.clone()
        else:
            max_jump = torch.clamp(hi, max=c.cd_jump)
            jump = 1 + (torch.rand(b, generator=gen) * max_jump).long().clamp(max=max_jump - 1)
        lo = hi - jump
        sig_t = torch.as_tensor(sig, dtype=torch.float32)
        ab = torch.as_tensor(teacher.alphas_cumprod[ts], dtype=torch.float32)
        ts_t = torch.as_tensor(ts, dtype=torch.long)
        z = torch.randn(x0.shape, generator=gen).to(dev)
        s_hi = sig_t[hi].view(b, 1, 1).to(dev)
        x_hi = x0 + s_hi * z
        cond = self.encode_obs(batch["obs"])
        with torch.no_grad():
            tcond = teacher.encode_obs(batch["obs"])
            x, cur = x_hi.clone(), hi.clone()
            for _ in range(int(jump.max())):  # teacher DDIM steps, one level at a time, for the items above lo
                idx = (cur > lo).nonzero().squeeze(1)
                now, nxt = cur[idx], cur[idx] - 1
                k = idx.to(dev)
                x[k] = self._teacher_step(teacher, x[k], ts_t[now].to(dev), ab[now].view(-1, 1, 1).to(dev),
                                          sig_t[nxt].view(-1, 1, 1).to(dev), tcond[k])
                cur[idx] = nxt
            if c.cd_jump == 0:  # f(x, sigma_min) = x: the target is the teacher's ODE solution itself
                target = x
            else:
                target = self.consistency_fn(x, sig_t[lo].to(dev), cond.detach(), self._target_net())
        pred = self.consistency_fn(x_hi, s_hi.view(b), cond)
        loss = self._distance(pred, target).mean()
        info = {"jump": float(jump.float().mean())}
        if c.dsm_weight > 0:
            dsm = (pred - x0).pow(2).mean()
            loss = loss + c.dsm_weight * dsm
            info["dsm"] = float(dsm.detach())
        return loss, info

    @staticmethod
    def _teacher_step(teacher: DiffusionPolicy, x: torch.Tensor, t: torch.Tensor, a_hi: torch.Tensor,
                      s_lo: torch.Tensor, tcond: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step of the teacher from timestep ``t`` (``abar = a_hi``) to the
        level ``s_lo``, in variance-exploding coordinates ``x = x_0 + sigma * eps``."""
        x_vp = x * a_hi.sqrt()  # the teacher's variance-preserving variable
        out = teacher.denoiser(x_vp, t, tcond)
        if teacher.config.prediction_type == "epsilon":
            x0_hat = (x_vp - (1 - a_hi).sqrt() * out) / a_hi.sqrt()
        else:
            x0_hat = out
        if teacher.config.clip_sample:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = (x_vp - a_hi.sqrt() * x0_hat) / (1 - a_hi).sqrt()
        return x0_hat + s_lo * eps_hat

    # ------------------------------------------------------------------ export
    def export_modules(self) -> dict[str, nn.Module]:
        """``sampler``: ``actions = g(*obs, noise_0, ..., noise_{k-1})`` (env units) for the configured
        ``num_inference_steps``; ``consistency_fn``: one evaluation ``x0 = f(x, sigma, *obs)``;
        ``deploy``: ``actions = g(obs_dict)`` with fixed noise (see ``DeployModule``)."""
        sampler = ConsistencyModule(self)
        return {"sampler": sampler, "consistency_fn": ConsistencyFnModule(self),
                "deploy": DeployModule(sampler, [(self.horizon, self.action_dim)] * sampler.k)}


TEACHER_SHAPE_FIELDS = ("denoiser", "down_dims", "kernel_size", "n_groups", "time_embed_dim", "mlp_hidden")


def check_student_overrides(overrides: Mapping[str, Any], teacher: DiffusionPolicy) -> None:
    """Refuse network-shape overrides that a student starting from ``teacher`` cannot honour
    (``cd_student="teacher"`` copies the teacher's network), naming the field."""
    if overrides.get("cd_student", "teacher") != "teacher":
        return
    for k in TEACHER_SHAPE_FIELDS:
        if k in overrides:
            mine, theirs = overrides[k], getattr(teacher.config, k)
            if (tuple(mine) if isinstance(mine, (list, tuple)) else mine) != theirs:
                raise ConfigError(f"{k}={mine!r} differs from the teacher's {theirs!r}: a distilled student starts as "
                                  "a copy of the teacher's network; drop the override or set cd_student=scratch")


def schedule_sigmas(num_train_timesteps: int, beta_schedule: str, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """DDPM timesteps every ``stride`` (ascending, 0 and T-1 included) and their VE sigmas
    ``sqrt((1 - abar_t) / abar_t)``: the noise levels of consistency distillation."""
    T = int(num_train_timesteps)
    ts = list(range(0, T, stride))
    if ts[-1] != T - 1:
        ts.append(T - 1)
    ts = np.asarray(ts)
    ab = np.cumprod(1.0 - make_betas(T, beta_schedule))[ts]
    return ts, np.sqrt((1.0 - ab) / ab)


def teacher_sigmas(teacher: DiffusionPolicy, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`schedule_sigmas` of a teacher policy."""
    return schedule_sigmas(teacher.config.num_train_timesteps, teacher.config.beta_schedule, stride)


def multistep_sample(policy: ConsistencyPolicy, cond: torch.Tensor, z: torch.Tensor,
                     sigmas: Sequence[float], net: nn.Module | None = None) -> torch.Tensor:
    """Consistency sampling: ``x0 = f(sigma_0 z_0)``, then for each further sigma re-noise
    ``x = x0 + sqrt(sigma^2 - sigma_min^2) z_j`` and denoise again. ``z``: ``(B, k, H, A)``."""
    smin = policy.config.sigma_min
    x0 = None
    for j, s in enumerate(sigmas):
        if j == 0:
            x = z[:, 0] * s
        else:
            x = x0 + math.sqrt(max(s * s - smin * smin, 0.0)) * z[:, j]
        x0 = policy.consistency_fn(x, x.new_full((x.shape[0],), float(s)), cond, net).clamp(-1.0, 1.0)
    return x0


class ConsistencyModule(ExportModule):
    """``actions (B, H, A) env units = g(*obs, noise_0, ..., noise_{k-1})``, each noise ``(B, H, A)``;
    the sigmas are constants of the graph."""

    def __init__(self, policy: ConsistencyPolicy) -> None:
        super().__init__(policy)
        self.sigmas = policy.sample_sigmas
        self.k = len(self.sigmas)
        self.input_names = [*self.obs_keys, *[f"noise_{j}" for j in range(self.k)]]
        self.output_names = ["actions"]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        p = self.policy
        obs, noises = inputs[: len(self.obs_keys)], inputs[len(self.obs_keys):]
        cond = p.encode_obs(self._obs(obs))
        z = torch.stack(list(noises), dim=1)
        return p.unnormalize_action(multistep_sample(p, cond, z, self.sigmas))

    def example_inputs(self, batch: int = 1):
        p = self.policy
        return (*self.obs_examples(batch), *[torch.zeros(batch, p.horizon, p.action_dim) for _ in range(self.k)])


class ConsistencyFnModule(ExportModule):
    """``x0 (B, H, A) normalised = f(x (B, H, A), sigma (B,), *obs)``: one consistency evaluation."""

    def __init__(self, policy: ConsistencyPolicy) -> None:
        super().__init__(policy)
        self.input_names = ["x", "sigma", *self.obs_keys]
        self.output_names = ["x0"]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, *obs: torch.Tensor) -> torch.Tensor:
        p = self.policy
        return p.consistency_fn(x, sigma, p.encode_obs(self._obs(obs)))

    def example_inputs(self, batch: int = 1):
        p = self.policy
        return (torch.zeros(batch, p.horizon, p.action_dim), torch.full((batch,), p.config.sigma_max),
                *self.obs_examples(batch))


# ============================================================================ Consistency-AC


def _first_rows(batch: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` rows of a (nested) batch of tensors."""
    return {k: _first_rows(v, n) if isinstance(v, Mapping) else v[:n] for k, v in batch.items()}


class ConsistencyAC:
    """Consistency-AC (Ding & Jin 2024): a consistency actor trained with BC + Q, offline.

    Critic: the SAC agent's ``EnsembleCritic`` (``n_critics`` Q networks in one batched pass) on
    the actor's observation features (detached) and a *macro action*: the first
    ``n_action_steps`` actions of a chunk, flattened, in normalised units (what the runtime executes
    per inference, so the TD step is the ``n_action_steps``-step return of the chunk). TD target:
    ``r + gamma^m * min_i Q'_i(s', a')`` with ``a'`` sampled from the actor (no gradient), Polyak
    targets. ``cql_weight`` (default 1; 0 turns it off) adds CQL's gap
    ``cql_weight * mean(Q(s, a_pi) - Q(s, a_data))`` to the critic's loss, with the actor's own chunks
    as CQL's proposal: from expert-only demos the critic has seen no other action, and without the gap
    the Q term followed its extrapolation (Push, 3 seeds: 25% offline at weight 0, 40% at 1;
    bench/bench_consistency_ac.py).

    Actor: ``bc_weight * L_consistency + eta * (-Q(s, a_pi) / mean|Q|) + anchor_weight * |a_pi - a|^2``
    with ``a_pi`` a sample of the actor WITH gradient (its ``num_inference_steps`` consistency steps),
    Q the mean over the ensemble, normalised by its detached mean magnitude as in TD3+BC, and ``a``
    the demonstrated macro action. The anchor is TD3+BC's behaviour cloning on the very action the
    critic scores: the consistency loss weighs the noisiest level, where 1-step sampling starts, by
    1 / (sigma_{n+1} - sigma_n), so little that without it the Q term moved the 1-step chunks off the
    data within a few hundred updates (Push, bench/bench_consistency_ac.py: 0% success at eta 1).
    ``update(..., n_bc=n)`` takes both cloning terms on the first ``n`` rows only: the online phase
    puts the demonstrations there and leaves its own episodes to the critic, so the actor does not
    imitate its failures.

    ``train(dataset, steps)`` runs offline on a :class:`ChunkDataset` (rewards and terminations
    come from the episodes); ``update(batch, ...)`` is one step on any batch with TD fields (the
    online phase, :mod:`serl_ctrl.agents.consistency_ac_run`, feeds it demo/online mixes). The
    actor is an ordinary :class:`ConsistencyPolicy` afterwards (save, export, run it as any other).
    """

    def __init__(self, actor: ConsistencyPolicy, *, n_critics: int = 2, critic_hidden: Sequence[int] = (256, 256),
                 gamma: float = 0.99, tau: float = 0.005, eta: float = 1.0, bc_weight: float = 1.0,
                 anchor_weight: float = 1.0, cql_weight: float = 1.0, critic_lr: float = 3e-4,
                 seed: int = 0) -> None:
        from .sac import EnsembleCritic

        if actor.spec.image_keys:
            raise ValueError("ConsistencyAC runs on state observations (the critic reads the "
                                      "actor's detached features; an image critic needs its own encoder)")
        self.actor = actor
        self.gamma, self.tau, self.eta, self.bc_weight = float(gamma), float(tau), float(eta), float(bc_weight)
        self.anchor_weight, self.cql_weight = float(anchor_weight), float(cql_weight)
        self.k = actor.n_action_steps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.critic = EnsembleCritic(actor.obs_feature_dim, self.k * actor.action_dim, n_critics,
                                         tuple(critic_hidden))
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        c = actor.config
        self.actor_opt = torch.optim.AdamW(actor.trainable_parameters(), lr=c.lr, betas=(0.95, 0.999),
                                           weight_decay=c.weight_decay)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.seed = seed
        self.updates = 0  # gradient steps so far (offline and online)

    def to(self, device: torch.device | str) -> "ConsistencyAC":
        """Move the actor and both critics (before the first update, or between phases)."""
        for m in (self.actor, self.critic, self.target_critic):
            m.to(device)
        for opt in (self.actor_opt, self.critic_opt):  # Adam moments follow their parameters
            for st in opt.state.values():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor) and v.dim() > 0:
                        st[k] = v.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Actor, critic, target critic, both optimisers and the update count (the form
        :mod:`serl_ctrl.agents.checkpoint` stores)."""
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "target_critic": self.target_critic.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.updates = int(state["updates"])

    def _sample(self, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(self.actor.noise_shape(cond.shape[0]), generator=gen).to(cond.device)
        return multistep_sample(self.actor, cond, z, self.actor.sample_sigmas)[:, : self.k].reshape(cond.shape[0], -1)

    def update(self, batch: Mapping[str, Any], gen: torch.Generator, step: int = 0, total_steps: int = 1,
               n_bc: int | None = None) -> dict:
        """One critic and one actor step on a ``batch_to_torch`` batch with TD fields; the cloning
        terms use its first ``n_bc`` rows (default: all)."""
        actor = self.actor
        b = batch["action"].shape[0]
        n_bc = b if n_bc is None else int(n_bc)
        if not 0 < n_bc <= b:
            raise ValueError(f"n_bc={n_bc}: must be in 1..{b} (the batch's rows)")
        cond = actor.encode_obs(batch["obs"])
        feat = cond.detach()
        with torch.no_grad():
            next_cond = actor.encode_obs(batch["next_obs"])
            q_next = self.target_critic(next_cond, self._sample(next_cond, gen)).min(dim=0).values
            y = batch["reward"] + batch["discount"] * q_next
        # The actor's terms are built before the critic step (it changes no actor weight), so that the
        # conservative term can score the same chunks; the generator's draws keep their order.
        bc_loss, _ = actor.compute_loss(_first_rows(batch, n_bc) if n_bc < b else batch, gen, step, total_steps)
        a_pi = self._sample(cond, gen)
        q = self.critic(feat, batch["action"][:, : self.k].reshape(b, -1))
        critic_loss = td_loss = (q - y.unsqueeze(0)).pow(2).mean()
        gap = torch.zeros(())
        if self.cql_weight > 0:
            gap = (self.critic(feat, a_pi.detach()) - q).mean()
            critic_loss = td_loss + self.cql_weight * gap
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        self.critic.requires_grad_(False)
        q_pi = self.critic(feat, a_pi).mean(dim=0)
        self.critic.requires_grad_(True)
        q_loss = -q_pi.mean() / q_pi.detach().abs().mean().clamp(min=1e-6)
        anchor = (a_pi[:n_bc] - batch["action"][:n_bc, : self.k].reshape(n_bc, -1)).pow(2).mean()
        loss = self.bc_weight * bc_loss + self.eta * q_loss + self.anchor_weight * anchor
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        if actor.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(actor.trainable_parameters(), actor.config.grad_clip)
        self.actor_opt.step()
        actor.after_update(step, total_steps)
        with torch.no_grad():
            for pt, p in zip(self.target_critic.parameters(), self.critic.parameters()):
                pt.lerp_(p, self.tau)
        self.updates += 1
        return {"critic_loss": float(td_loss.detach()), "bc_loss": float(bc_loss.detach()),
                "anchor": float(anchor.detach()), "q": float(q_pi.detach().mean()), "q_gap": float(gap.detach())}

    def train(self, dataset, steps: int, progress=None, total_steps: int | None = None, *, start: int = 0,
              gen: torch.Generator | None = None, rng: np.random.Generator | None = None,
              after_step: Callable[[int, dict], None] | None = None) -> dict:
        """Offline training on ``dataset`` (its TD fields are prepared here).

        ``total_steps``: the length of the whole run the consistency curriculum spreads over (default
        ``steps``; an offline-to-online run passes its offline plus online updates). A resumed run
        passes ``start`` (the steps done) and its restored generators ``gen`` / ``rng`` (default: fresh
        ones seeded with the agent's seed); ``after_step(n, info)`` runs after each step (checkpoints)."""
        dataset.prepare_td(self.k, self.gamma)
        gen = torch.Generator().manual_seed(self.seed) if gen is None else gen
        rng = np.random.default_rng(self.seed) if rng is None else rng
        total = steps if total_steps is None else max(int(total_steps), steps)
        bar = progress(total=steps, desc="train consistency-ac", **({"initial": start} if start else {})) \
            if progress else None
        self.actor.train()
        info: dict = {}
        try:
            for step in range(start, steps):
                batch = self.actor.batch_to_torch(dataset.sample(self.actor.config.batch_size, rng), gen, augment=True)
                info = self.update(batch, gen, step, total)
                if after_step is not None:
                    after_step(step + 1, info)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self.actor.eval()
        return {"steps": steps, **info}
