"""Soft Actor-Critic with the RLPD choices SERL uses, and DrQ for images. One file, top to bottom.

Pieces
------
``SACAgent``   networks, optimizers and the update rule. ``act(obs)`` picks actions;
               ``update(batch)`` runs ONE env step's worth of learning on a batch of
               ``utd * batch_size`` rows laid out as ``utd`` consecutive minibatches:
               ``utd`` critic updates (one per minibatch), then one actor update and one
               temperature update on the last minibatch (as RLPD / SERL).
               The agent never samples data itself: it is a pure function of (state, batch),
               which keeps it testable and makes checkpoint/resume exact.
``Learner``    owns the replay buffers and the sampler; consumes ``Transition`` objects and, for
               every env step it receives after ``learning_starts``, samples a batch and calls
               ``agent.update`` once: a fixed, reproducible UTD per env step (never "as fast as
               the learner can"). Publishes ``policy_version`` and ``actor_state_dict()``.
               This is the transition interface: in one process the training loop feeds it
               directly; across processes/machines (ROS 2) the transport only moves
               ``Transition.to_arrays()`` one way and ``actor_state_dict()`` the other way.
``train_online`` / ``evaluate``  a minimal single-process loop over a gymnasium env.

RLPD / SERL choices
-------------------
tanh-Gaussian actor; ensemble of ``n_critics`` (default 10) Q networks evaluated as one batched
computation (``EnsembleMLP``: stacked weights + ``baddbmm``); TD target = min over a random subset
of ``critic_subsample`` (default 2) *distinct* target critics (only those members are evaluated);
LayerNorm in the MLPs; Polyak-averaged targets; learned temperature with target entropy
``-|A|/2``; batches half demo / half online when a demo buffer is given.

Images (DrQ): random shift (pad 4, replicate) of obs and next_obs on every batch; one conv
encoder per camera + a proprioception embedding, shared by actor and critic but trained only
through the critic loss (the actor sees detached features); target encoder Polyak-averaged with
the target critic.

Gripper critic (``sac.gripper_critic``, HIL-SERL): the actor and the critic ensemble see only the
arm dimensions (all but the last); a ``GraspCritic`` over the same (detached) features picks
open / stay / close for the last dimension, trained with double-DQN targets on the same minibatches
(one backward pass with the ensemble's loss, its own optimizer, Polyak target). ``act`` and the
exported ``PolicyModule`` return the full env action. See ``serl_ctrl.agents.grasp``.

Actions: the networks work in [-1, 1]^A; ``act`` returns env-scaled actions and ``update`` expects
env-scaled actions in the batch (as stored by the replay buffer). The action space must be a
bounded Box.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serl_ctrl.agents import grasp
from serl_ctrl.agents.config import SACConfig
from serl_ctrl.data.replay import MixedSampler, ObsSpec, ReplayBuffer
from serl_ctrl.nn.encoders import (ObservationEncoder, dict_to_torch, obs_to_torch,
                                   random_shift)
from serl_ctrl.nn.mlp import MLP, EnsembleMLP, float32_layer
from serl_ctrl.utils.device import resolve_device

__all__ = ["TanhGaussianActor", "EnsembleCritic", "PolicyModule", "SACAgent", "Transition",
           "Learner", "train_online", "evaluate"]

Obs = Union[np.ndarray, Dict[str, np.ndarray]]
_LOG2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ============================================================================ networks


class TanhGaussianActor(nn.Module):
    """MLP trunk -> (mean, log_std); actions ``tanh(mean + std * eps)`` in [-1, 1]."""

    def __init__(self, feat_dim: int, act_dim: int, hidden_dims: Tuple[int, ...], *,
                 layer_norm: bool = True, act: str = "relu", log_std_min: float = -5.0,
                 log_std_max: float = 2.0) -> None:
        super().__init__()
        self.trunk = MLP(feat_dim, hidden_dims, None, layer_norm=layer_norm, act=act)
        self.head = nn.Linear(self.trunk.out_dim, 2 * act_dim)
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)

    def forward(self, feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = float32_layer(self.head, self.trunk(feat)).chunk(2, dim=-1)
        # smooth squashing of log_std into [min, max] (keeps gradients at the bounds)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (
            torch.tanh(log_std) + 1.0)
        return mean, log_std

    def sample(self, feat: torch.Tensor, eps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample given standard normal ``eps``: (action in [-1,1], log prob)."""
        mean, log_std = self(feat)
        mean, log_std, eps = mean.float(), log_std.float(), eps.float()
        u = mean + log_std.exp() * eps
        logp = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
        # log |d tanh(u) / du| = log(1 - tanh(u)^2), in a numerically stable form
        logp = logp - (2.0 * (_LOG2 - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), logp


class EnsembleCritic(nn.Module):
    """``n`` Q networks as one batched ``EnsembleMLP``: ``(feat, action) -> (n, B)``."""

    def __init__(self, feat_dim: int, act_dim: int, n: int, hidden_dims: Tuple[int, ...], *,
                 layer_norm: bool = True, act: str = "relu") -> None:
        super().__init__()
        self.n = n
        self.net = EnsembleMLP(n, feat_dim + act_dim, hidden_dims, 1, layer_norm=layer_norm,
                               act=act)

    def forward(self, feat: torch.Tensor, action: torch.Tensor,
                members: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(torch.cat([feat, action.to(feat.dtype)], dim=-1), members).squeeze(-1)


class PolicyModule(nn.Module):
    """The deployable policy: observation -> deterministic (mean) action in env units.

    ``forward(obs)`` takes a dict of batched tensors for Dict spaces (images uint8 ``(B,H,W,C)``,
    state float) or one ``(B, *shape)`` tensor for Box spaces. No sampling, no augmentation, no
    data-dependent Python control flow: traceable and exportable with ``torch.onnx.export``.

    With a ``grasp_critic`` the actor gives the arm dimensions and the last one is the gripper
    command of the greedy class, "stay" resolved from the observed gripper state (as ``act``)."""

    def __init__(self, spec: ObsSpec, encoder: ObservationEncoder, actor: TanhGaussianActor,
                 low: np.ndarray, high: np.ndarray,
                 grasp_critic: Optional[grasp.GraspCritic] = None) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.actor = actor
        self.grasp_critic = grasp_critic
        self.register_buffer("scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, obs: Any) -> torch.Tensor:
        d = obs if self.spec.is_dict else {"obs": obs}
        feat = self.encoder(d)
        mean, _ = self.actor(feat)
        unit = torch.tanh(mean)
        if self.grasp_critic is not None:
            closed = grasp.gripper_closed(d[grasp.GRIPPER_KEY])
            cls = grasp.greedy_class(self.grasp_critic(feat), closed)
            unit = torch.cat([unit, grasp.class_to_command(cls, closed).unsqueeze(-1)], dim=-1)
        return unit * self.scale + self.center


# ============================================================================ agent


def _adam(params: List[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one kernel per tensor; ~4% faster updates on CPU than the
    default per-op path), falling back to the default where fused is unsupported."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def bf16_is_native(device: torch.device) -> bool:
    """True where bf16 matrix products run natively (and so faster than float32): CPUs with
    AMX or AVX512-BF16, CUDA GPUs that support bf16. Elsewhere bf16 autocast is emulated."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = (getattr(torch.cpu, "_is_amx_tile_supported", None),
                  getattr(torch.cpu, "_is_avx512_bf16_supported", None))
        return any(bool(p()) for p in probes if p is not None)
    return False


def resolve_dtype(name: str, device: torch.device) -> str:
    """``sac.dtype`` with ``auto`` resolved for ``device``: 'bf16-autocast' or 'float32'."""
    if name == "auto":
        return "bf16-autocast" if bf16_is_native(device) else "float32"
    return name


def _check_gripper_spaces(spec: ObsSpec, act_dim: int) -> None:
    """``sac.gripper_critic`` reads the gripper state from a ``gripper`` observation (see
    ``serl_ctrl.agents.grasp``) and needs an arm dimension besides the gripper's."""
    key = grasp.GRIPPER_KEY
    if key not in spec.state_keys or int(np.prod(spec.shapes[key])) != 1:
        raise ValueError(f"sac.gripper_critic needs a Dict observation with a 1-d {key!r} key (the "
                         f"measured finger opening); this space has keys {list(spec.keys)}")
    if act_dim < 2:
        raise ValueError(f"sac.gripper_critic needs the gripper as the last of >= 2 action dims, "
                         f"got {act_dim}")


class _CompiledOrEager:
    """``torch.compile(fn)`` that falls back to ``fn`` for good when compiling fails.

    torch.compile needs a working toolchain (a C++ compiler on CPU, Triton on GPU) that a robot
    computer may lack; a missing one should cost speed, not the run. The wrapped functions are
    pure (randomness comes in as arguments), so re-running a failed call eagerly is safe, and a
    genuine error in the function is raised again by the eager call."""

    def __init__(self, fn, name: str) -> None:
        self._fn, self._name = fn, name
        self._compiled = torch.compile(fn)
        self.failed: Optional[str] = None

    def __call__(self, *args):
        if self.failed is None:
            try:
                return self._compiled(*args)
            except Exception as e:  # noqa: BLE001 - any toolchain failure; eager re-raises bugs
                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}" \
                    if str(e).strip() else type(e).__name__
                warnings.warn(f"torch.compile of the SAC {self._name} failed ({self.failed}); "
                              f"running it eagerly (set sac.compile=false to skip compiling)",
                              RuntimeWarning, stacklevel=2)
        return self._fn(*args)


class SACAgent:
    """SAC + RLPD (+ DrQ for uint8 image keys).

    Args:
        observation_space: ``Box`` or ``Dict`` of ``Box`` (uint8 HWC keys are cameras).
        action_space: bounded ``Box``.
        config: ``SACConfig`` or a dict for ``SACConfig.from_dict`` (None = defaults).
        device: torch device for the networks (``auto``: a CUDA GPU when there is one).
        seed: seeds network initialisation and the agent's own torch generators (the global
            torch RNG is left untouched).
    """

    def __init__(self, observation_space: Any, action_space: Any,
                 config: "SACConfig | Mapping[str, Any] | None" = None,
                 device: "str | torch.device" = "cpu",
                 seed: int = 0) -> None:
        import gymnasium as gym

        cfg = config if isinstance(config, SACConfig) else SACConfig.from_dict(config or {})
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"action space must be a Box, got {type(action_space).__name__}")
        low = np.asarray(action_space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(action_space.high, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("action space must be bounded (finite low/high): the actor is "
                             "tanh-squashed; rescale with gymnasium.wrappers.RescaleAction")
        self.config = cfg
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = resolve_device(str(device))
        self.seed = int(seed)
        self.spec = ObsSpec.from_space(observation_space)
        self.act_dim = int(low.size)
        if cfg.gripper_critic:
            _check_gripper_spaces(self.spec, self.act_dim)
        #: actions the actor (and the critic ensemble) handle: all, or all but the gripper
        self.policy_dim = self.act_dim - 1 if cfg.gripper_critic else self.act_dim
        self._low, self._high = low, high
        self._scale = torch.as_tensor((high - low) / 2.0, dtype=torch.float32, device=self.device)
        self._center = torch.as_tensor((high + low) / 2.0, dtype=torch.float32,
                                       device=self.device)
        self.target_entropy = (float(cfg.target_entropy) if cfg.target_entropy is not None
                               else -self.policy_dim / 2.0)
        self.image_keys = self.spec.image_keys
        self.compute_dtype = resolve_dtype(cfg.dtype, self.device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = ObservationEncoder(self.spec, cfg.encoder,
                                              normalize_state=cfg.normalize_state).to(self.device)
            feat = self.encoder.out_dim
            self.actor = TanhGaussianActor(
                feat, self.policy_dim, cfg.hidden_dims, layer_norm=cfg.layer_norm,
                act=cfg.activation, log_std_min=cfg.log_std_min,
                log_std_max=cfg.log_std_max).to(self.device)
            self.critic = EnsembleCritic(feat, self.policy_dim, cfg.n_critics, cfg.hidden_dims,
                                         layer_norm=cfg.layer_norm,
                                         act=cfg.activation).to(self.device)
            #: HIL-SERL's discrete gripper critic (None unless ``sac.gripper_critic``)
            self.grasp_critic: Optional[grasp.GraspCritic] = None
            if cfg.gripper_critic:
                self.grasp_critic = grasp.GraspCritic(
                    feat, cfg.hidden_dims, layer_norm=cfg.layer_norm,
                    act=cfg.activation).to(self.device)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature),
                                                   dtype=torch.float32, device=self.device))
        self.critic_opt = _adam(list(self.critic.parameters()) + list(self.encoder.parameters()),
                                cfg.critic_lr)
        self.actor_opt = _adam(list(self.actor.parameters()), cfg.actor_lr)
        self.temp_opt = _adam([self.log_alpha], cfg.temperature_lr)
        self._gen = torch.Generator().manual_seed(self.seed)          # learning randomness
        self._act_gen = torch.Generator().manual_seed(self.seed + 1)  # acting randomness
        self.num_updates = 0          # env-step updates (= actor updates)
        self.num_critic_updates = 0
        self._online_params = list(self.critic.parameters()) + list(self.encoder.parameters())
        self._target_params = (list(self.target_critic.parameters())
                               + list(self.target_encoder.parameters()))
        self._critic_loss_fn = self._critic_loss
        self._actor_loss_fn = self._actor_loss
        if cfg.compile:
            self._critic_loss_fn = _CompiledOrEager(self._critic_loss, "critic loss")
            self._actor_loss_fn = _CompiledOrEager(self._actor_loss, "actor loss")
        self.target_grasp_critic: Optional[grasp.GraspCritic] = None
        self.grasp_opt: Optional[torch.optim.Optimizer] = None
        if self.grasp_critic is not None:
            self.target_grasp_critic = copy.deepcopy(self.grasp_critic).requires_grad_(False)
            self.grasp_opt = _adam(list(self.grasp_critic.parameters()), cfg.critic_lr)
            # one Polyak step moves every target (ensemble, encoder, grasp critic)
            self._online_params += list(self.grasp_critic.parameters())
            self._target_params += list(self.target_grasp_critic.parameters())
            self._critic_grasp_loss_fn = self._critic_grasp_loss
            if cfg.compile:
                self._critic_grasp_loss_fn = _CompiledOrEager(self._critic_grasp_loss,
                                                              "critic + grasp loss")

    # ------------------------------------------------------------------ helpers
    @property
    def temperature(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _autocast(self):
        if self.compute_dtype == "bf16-autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _randn(self, *shape: int, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(*shape, generator=gen or self._gen).to(self.device)

    def _to_unit(self, actions: np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
        return ((a.reshape(a.shape[0], -1) - self._center) / self._scale).clamp_(-1.0, 1.0)

    def _augment(self, obs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        pad = self.config.encoder.augment_pad
        if pad == 0 or not self.image_keys:
            return obs
        out = dict(obs)
        for k in self.image_keys:
            out[k] = random_shift(obs[k], pad, self._gen)
        return out

    def _subset(self) -> torch.Tensor:
        """``critic_subsample`` distinct target-critic indices (without replacement)."""
        idx = torch.randperm(self.config.n_critics, generator=self._gen)
        return idx[: self.config.critic_subsample].to(self.device)

    @property
    def needs_state_stats(self) -> bool:
        """True until ``fit_state_normalizer`` has run (only with ``normalize_state``)."""
        return self.encoder.needs_state_stats

    def fit_state_normalizer(self, observations: Mapping[str, np.ndarray]) -> None:
        """Fit the state normaliser of the encoder and its target on stored observations
        (``{key: (N, *shape)}``; image keys are ignored). Called once, before the first update."""
        keys = self.spec.state_keys
        states = np.concatenate([np.asarray(observations[k], dtype=np.float64).reshape(
            len(observations[k]), -1) for k in keys], axis=1)
        self.encoder.fit_state_normalizer(states)
        self.target_encoder.fit_state_normalizer(states)

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray:
        """Action(s) in env units for one observation (-> ``(A,)``) or a batch (-> ``(B, A)``)."""
        batched = self.spec.is_batched(obs)
        d = self.spec.as_dict(obs)
        if not batched:
            d = {k: np.asarray(v)[None] for k, v in d.items()}
        t = dict_to_torch(self.spec, d, self.device)
        feat = self.encoder(t)
        mean, log_std = self.actor(feat)
        if deterministic:
            u = mean
        else:
            u = mean + log_std.exp() * self._randn(*mean.shape, gen=self._act_gen)
        unit = torch.tanh(u)
        if self.grasp_critic is not None:
            command = self._gripper_command(feat, t[grasp.GRIPPER_KEY], deterministic)
            unit = torch.cat([unit, command.unsqueeze(-1)], dim=-1)
        a = unit * self._scale + self._center
        out = a.cpu().numpy().astype(self.action_space.dtype, copy=False)
        out = np.clip(out, self._low, self._high).astype(self.action_space.dtype, copy=False)
        out = out.reshape(out.shape[0], *self.action_space.shape)
        return out if batched else out[0]

    def _gripper_command(self, feat: torch.Tensor, opening: torch.Tensor,
                         deterministic: bool) -> torch.Tensor:
        """The gripper command in [-1, 1] (B,): the greedy class, or with probability
        ``grasp_epsilon`` (training only) a random valid one (stay or change, half each)."""
        closed = grasp.gripper_closed(opening)
        cls = grasp.greedy_class(self.grasp_critic(feat), closed)
        eps = self.config.grasp_epsilon
        if not deterministic and eps > 0:
            u = torch.rand(2, cls.shape[0], generator=self._act_gen).to(self.device)
            rand = torch.where(u[1] < 0.5, grasp.toggle_class(closed),
                               torch.full_like(cls, grasp.STAY))
            cls = torch.where(u[0] < eps, rand, cls)
        return grasp.class_to_command(cls, closed)

    def snap_gripper(self, action: np.ndarray) -> np.ndarray:
        """An action chosen outside the policy (uniform random exploration) as the agent may
        execute it: unchanged without the gripper critic; with it, the gripper dimension becomes
        fully closed (> center) or fully open, the only commands whose class the measured
        gripper state identifies (``serl_ctrl.agents.grasp``)."""
        if self.grasp_critic is None:
            return action
        out = np.array(action, copy=True)
        g = out[..., -1]
        out[..., -1] = np.where(g > (self._low[-1] + self._high[-1]) / 2.0, self._high[-1],
                                self._low[-1])
        return out

    # ------------------------------------------------------------------ learning
    def target_q(self, next_obs: Dict[str, torch.Tensor], next_actions: torch.Tensor,
                 members: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Min over a random subset of ``critic_subsample`` distinct target critics.

        Only those members are evaluated. Returns ``(q_min (B,), members)``."""
        if members is None:
            members = self._subset()
        with torch.no_grad(), self._autocast():
            q = self.target_critic(self.target_encoder(next_obs), next_actions, members)
        return q.float().min(dim=0).values, members

    def _critic_loss(self, obs, actions, rewards, next_obs, terminated, eps_next, members,
                     alpha):
        return self._critic_terms(obs, actions, rewards, next_obs, terminated, eps_next, members,
                                  alpha)[:4]

    def _critic_terms(self, obs, actions, rewards, next_obs, terminated, eps_next, members,
                      alpha):
        """The ensemble's TD loss and its by-products: ``(loss, q mean, target mean, detached
        features of obs, next-obs features of the online and the target encoder)``."""
        cfg = self.config
        with torch.no_grad():
            with self._autocast():
                next_feat = self.encoder(next_obs)
                next_a, next_logp = self.actor.sample(next_feat, eps_next)
                tfeat = self.target_encoder(next_obs) if self.encoder.has_params else next_feat
                q_next = self.target_critic(tfeat, next_a, members).float().min(dim=0).values
            if cfg.backup_entropy:
                q_next = q_next - alpha * next_logp
            target = rewards + cfg.gamma * (1.0 - terminated) * q_next
        with self._autocast():
            feat = self.encoder(obs)
            q = self.critic(feat, actions)
        q = q.float()
        loss = (q - target.unsqueeze(0)).pow(2).mean()
        return loss, q.detach().mean(), target.mean(), feat.detach().float(), next_feat, tfeat

    def _critic_grasp_loss(self, obs, actions, rewards, next_obs, terminated, eps_next, members,
                           alpha, classes, g_rewards, closed_next):
        """The ensemble's loss (arm actions) and the grasp critic's double-DQN loss on the same
        minibatch, sharing its encoder passes; the grasp critic sees detached features, so the
        encoder learns from the ensemble's loss alone (as with the actor)."""
        loss, qm, tm, feat, next_feat, tfeat = self._critic_terms(
            obs, actions, rewards, next_obs, terminated, eps_next, members, alpha)
        with torch.no_grad(), self._autocast():
            target = grasp.double_dqn_target(self.grasp_critic(next_feat),
                                             self.target_grasp_critic(tfeat), closed_next,
                                             g_rewards, terminated, self.config.gamma)
        with self._autocast():
            q = self.grasp_critic(feat)
        q_taken = q.gather(-1, classes.unsqueeze(-1)).squeeze(-1)
        g_loss = (q_taken - target).pow(2).mean()
        return loss, qm, tm, feat, g_loss, q_taken.detach().mean()

    def _grasp_labels(self, obs, next_obs, actions, rewards):
        """Per row: the class of the stored gripper command, the penalised reward and whether
        the gripper is closed in the next observation (``serl_ctrl.agents.grasp``)."""
        closed = grasp.gripper_closed(obs[grasp.GRIPPER_KEY])
        classes = grasp.command_to_class(actions[:, -1], closed)
        g_rewards = grasp.grasp_rewards(rewards, classes, self.config.grasp_penalty)
        return classes, g_rewards, grasp.gripper_closed(next_obs[grasp.GRIPPER_KEY])

    def _actor_loss(self, feat, eps, alpha):
        with self._autocast():
            a, logp = self.actor.sample(feat, eps)
            q = self.critic(feat, a).float().mean(dim=0)
        loss = (alpha * logp - q).mean()
        return loss, logp.detach()

    def update(self, batch: Mapping[str, Any]) -> Dict[str, float]:
        """One env step of learning (see the module docstring for the batch layout).

        ``batch``: ``obs``, ``actions`` (env units), ``rewards``, ``next_obs``, ``terminated``
        (numpy, leading dim ``utd * batch_size`` or any multiple of ``utd``); extra keys are
        ignored. ``truncated`` does not stop bootstrapping (only ``terminated`` does).
        Returns float metrics."""
        cfg = self.config
        m = cfg.utd
        rewards = torch.as_tensor(np.asarray(batch["rewards"], dtype=np.float32),
                                  device=self.device).reshape(-1)
        n = rewards.shape[0]
        if n % m != 0:
            raise ValueError(f"batch has {n} rows, not a multiple of sac.utd={m} (expected "
                             f"utd * batch_size = {m * cfg.batch_size})")
        mb = n // m
        terminated = torch.as_tensor(np.asarray(batch["terminated"], dtype=np.float32),
                                     device=self.device).reshape(-1)
        actions = self._to_unit(batch["actions"])
        obs = self._augment(obs_to_torch(self.spec, batch["obs"], self.device))
        next_obs = self._augment(obs_to_torch(self.spec, batch["next_obs"], self.device))
        labels = None
        if self.grasp_critic is not None:
            labels = self._grasp_labels(obs, next_obs, actions, rewards)
            actions = actions[:, :self.policy_dim]

        def sl(x, i):
            if isinstance(x, dict):
                return {k: v[i * mb:(i + 1) * mb] for k, v in x.items()}
            return x[i * mb:(i + 1) * mb]

        alpha = self.log_alpha.detach().exp()
        c_loss = q_mean = t_mean = 0.0
        g_metrics = {"grasp_loss": 0.0, "grasp_q_mean": 0.0}
        feat = None
        for i in range(m):
            eps_next = self._randn(mb, self.policy_dim)
            members = self._subset()
            args = (sl(obs, i), sl(actions, i), sl(rewards, i), sl(next_obs, i),
                    sl(terminated, i), eps_next, members, alpha)
            if labels is None:
                loss, qm, tm, feat = self._critic_loss_fn(*args)
                total = loss
            else:
                loss, qm, tm, feat, g_loss, gq = self._critic_grasp_loss_fn(
                    *args, *(sl(x, i) for x in labels))
                total = loss + g_loss  # disjoint parameters: one backward serves both critics
                self.grasp_opt.zero_grad(set_to_none=True)
                g_metrics["grasp_loss"] += float(g_loss.detach()) / m
                g_metrics["grasp_q_mean"] += float(gq) / m
            self.critic_opt.zero_grad(set_to_none=True)
            total.backward()
            self.critic_opt.step()
            if labels is not None:
                self.grasp_opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(self._target_params, self._online_params, cfg.tau)
            self.num_critic_updates += 1
            c_loss += float(loss.detach()) / m
            q_mean += float(qm) / m
            t_mean += float(tm) / m

        # actor and temperature: once, on the last minibatch, with detached encoder features.
        # The features are the ones the last critic step computed (encoder weights from just
        # before that step): with images this saves a whole encoder pass per env step.
        eps = self._randn(mb, self.policy_dim)
        self.critic.requires_grad_(False)
        try:
            a_loss, logp = self._actor_loss_fn(feat, eps, alpha)
            self.actor_opt.zero_grad(set_to_none=True)
            a_loss.backward()
            self.actor_opt.step()
        finally:
            self.critic.requires_grad_(True)
        entropy = -logp.mean()
        temp_loss = self.log_alpha * (entropy - self.target_entropy)
        self.temp_opt.zero_grad(set_to_none=True)
        temp_loss.backward()
        self.temp_opt.step()
        self.num_updates += 1
        out = {"critic_loss": c_loss, "q_mean": q_mean, "target_q_mean": t_mean,
               "actor_loss": float(a_loss.detach()), "entropy": float(entropy),
               "temperature": float(alpha), "temperature_loss": float(temp_loss.detach())}
        if labels is not None:
            out.update(g_metrics)
        return out

    # ------------------------------------------------------------------ export / sync
    def policy_state(self) -> PolicyModule:
        """A detached CPU float32 copy of the deployable policy (obs -> mean action)."""
        grasp_critic = (copy.deepcopy(self.grasp_critic).cpu()
                        if self.grasp_critic is not None else None)
        mod = PolicyModule(self.spec, copy.deepcopy(self.encoder).cpu(),
                           copy.deepcopy(self.actor).cpu(), self._low, self._high, grasp_critic)
        return mod.float().eval().requires_grad_(False)

    def _acting_modules(self) -> Dict[str, nn.Module]:
        """The modules ``act`` uses, by state-dict prefix (the grasp critic picks the gripper)."""
        mods: Dict[str, nn.Module] = {"encoder": self.encoder, "actor": self.actor}
        if self.grasp_critic is not None:
            mods["grasp_critic"] = self.grasp_critic
        return mods

    def actor_state_dict(self) -> Dict[str, torch.Tensor]:
        """Everything ``act`` needs (encoder + actor [+ grasp critic] weights), cloned, for an
        actor process."""
        sd = {f"{name}.{k}": v for name, mod in self._acting_modules().items()
              for k, v in mod.state_dict().items()}
        return {k: v.detach().clone().cpu() for k, v in sd.items()}

    def load_actor_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        for name, mod in self._acting_modules().items():
            pre = name + "."
            mod.load_state_dict({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)})

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Networks, targets, temperature, optimizers, generators and counters (tensors and
        plain Python values only; see ``serl_ctrl.agents.checkpoint``)."""
        return {
            "encoder": self.encoder.state_dict(), "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_encoder": self.target_encoder.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
            "temp_opt": self.temp_opt.state_dict(),
            "gen": self._gen.get_state(), "act_gen": self._act_gen.get_state(),
            "counters": {"num_updates": self.num_updates,
                         "num_critic_updates": self.num_critic_updates},
            **self._grasp_state(),
        }

    def _grasp_state(self) -> Dict[str, Any]:
        if self.grasp_critic is None:
            return {}
        return {"grasp_critic": self.grasp_critic.state_dict(),
                "target_grasp_critic": self.target_grasp_critic.state_dict(),
                "grasp_opt": self.grasp_opt.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_encoder.load_state_dict(state["target_encoder"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.temp_opt.load_state_dict(state["temp_opt"])
        self._gen.set_state(state["gen"])
        self._act_gen.set_state(state["act_gen"])
        self.num_updates = int(state["counters"]["num_updates"])
        self.num_critic_updates = int(state["counters"]["num_critic_updates"])
        if self.grasp_critic is not None:
            self.grasp_critic.load_state_dict(state["grasp_critic"])
            self.target_grasp_critic.load_state_dict(state["target_grasp_critic"])
            self.grasp_opt.load_state_dict(state["grasp_opt"])


# ============================================================================ transitions


@dataclass
class Transition:
    """One env step, as numpy arrays, numbered by the actor that produced it.

    ``seq`` counts up by one per env step of that ``actor_id`` (the learner drops duplicates and
    counts gaps). ``to_arrays`` / ``from_arrays`` give a flat dict of numpy arrays (keys
    ``obs`` or ``obs/<key>``, ``next_obs...``, ``action``, ``reward``, ``terminated``,
    ``truncated``, ``seq``, ``actor_id``) for transports that must not pickle."""

    obs: Obs
    action: np.ndarray
    reward: float
    next_obs: Obs
    terminated: bool
    truncated: bool
    seq: int
    actor_id: int = 0

    def to_arrays(self) -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        for name in ("obs", "next_obs"):
            v = getattr(self, name)
            if isinstance(v, Mapping):
                out.update({f"{name}/{k}": np.asarray(x) for k, x in v.items()})
            else:
                out[name] = np.asarray(v)
        out["action"] = np.asarray(self.action, dtype=np.float32)
        out["reward"] = np.asarray(self.reward, dtype=np.float32)
        out["terminated"] = np.asarray(bool(self.terminated))
        out["truncated"] = np.asarray(bool(self.truncated))
        out["seq"] = np.asarray(int(self.seq), dtype=np.int64)
        out["actor_id"] = np.asarray(int(self.actor_id), dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, d: Mapping[str, np.ndarray]) -> "Transition":
        def obs(name: str) -> Obs:
            if name in d:
                return np.asarray(d[name])
            pre = name + "/"
            return {k[len(pre):]: np.asarray(v) for k, v in d.items() if k.startswith(pre)}

        return cls(obs=obs("obs"), action=np.asarray(d["action"]), reward=float(d["reward"]),
                   next_obs=obs("next_obs"), terminated=bool(d["terminated"]),
                   truncated=bool(d["truncated"]), seq=int(d["seq"]),
                   actor_id=int(d.get("actor_id", 0)))


class Learner:
    """Consumes transitions, runs a fixed number of updates per received env step.

    For every transition received once ``learning_starts`` env steps have arrived, the learner
    samples ``utd * batch_size`` rows (``demo_fraction`` of each minibatch from ``demo_buffer``
    if given) and calls ``agent.update`` once (= ``utd`` critic updates + 1 actor + 1
    temperature update), then bumps ``policy_version``. Updates happen inside
    ``add_transition``, so the UTD ratio does not depend on how fast anything runs.

    Args:
        agent: the ``SACAgent`` to train.
        online_buffer: defaults to ``ReplayBuffer(..., capacity=config.replay_capacity)``.
        demo_buffer: optional buffer of demonstrations (fill it before training).
        seed: seeds the sampling generator (numpy PCG64).
    """

    def __init__(self, agent: SACAgent, online_buffer: Optional[ReplayBuffer] = None,
                 demo_buffer: Optional[ReplayBuffer] = None, *, seed: int = 0) -> None:
        self.agent = agent
        self.config = agent.config
        self.online = online_buffer if online_buffer is not None else ReplayBuffer(
            agent.observation_space, agent.action_space, self.config.replay_capacity)
        self.demo = demo_buffer
        self.sampler = MixedSampler(demo_buffer, self.online, self.config.demo_fraction)
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.policy_version = 0
        self.duplicates = 0
        self.gaps = 0
        self._last_seq: Dict[int, int] = {}

    @property
    def ready(self) -> bool:
        return self.env_steps >= self.config.learning_starts and len(self.online) > 0

    def add_transition(self, t: Transition) -> Optional[Dict[str, float]]:
        """Store ``t`` and, if learning has started, run one UTD step. Returns its metrics
        (None if no update ran, e.g. before ``learning_starts`` or for a duplicate)."""
        last = self._last_seq.get(t.actor_id)
        if last is not None:
            if t.seq <= last:
                self.duplicates += 1
                return None
            self.gaps += t.seq - last - 1
        self._last_seq[t.actor_id] = t.seq
        self.online.add(t.obs, t.action, t.reward, t.next_obs, t.terminated, t.truncated)
        self.env_steps += 1
        if not self.ready:
            return None
        return self.update()

    def add_transitions(self, transitions: Iterable[Transition]) -> List[Dict[str, float]]:
        """``add_transition`` for each; returns the metrics of the updates that ran."""
        out = []
        for t in transitions:
            m = self.add_transition(t)
            if m is not None:
                out.append(m)
        return out

    def update(self) -> Dict[str, float]:
        """One UTD step now (normally called by ``add_transition``)."""
        cfg = self.config
        if self.agent.needs_state_stats:
            self.agent.fit_state_normalizer(self._state_frames())
        batch = self.sampler.sample(cfg.batch_size, self.rng, num_minibatches=cfg.utd)
        metrics = self.agent.update(batch)
        self.policy_version += 1
        return metrics

    def _state_frames(self) -> Dict[str, np.ndarray]:
        """Every stored observation (demos and online) of the state keys, for the normaliser."""
        keys = self.agent.spec.state_keys
        parts = [b.stored_frames(keys) for b in (self.demo, self.online)
                 if b is not None and b.frames_stored > 0]
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}

    def actor_state_dict(self) -> Dict[str, torch.Tensor]:
        """Weights for actors (see ``SACAgent.load_actor_state_dict``); tag with policy_version."""
        return self.agent.actor_state_dict()

    def state_dict(self) -> Dict[str, Any]:
        d = {"agent": self.agent.state_dict(), "online": self.online.state_dict(),
             "rng": self.rng.bit_generator.state,
             "counters": {"env_steps": self.env_steps, "policy_version": self.policy_version,
                          "duplicates": self.duplicates, "gaps": self.gaps,
                          "last_seq": {str(k): v for k, v in self._last_seq.items()}}}
        if self.demo is not None:
            d["demo"] = self.demo.state_dict()
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.online.load_state_dict(state["online"])
        if self.demo is not None and "demo" in state:
            self.demo.load_state_dict(state["demo"])
        self.rng.bit_generator.state = state["rng"]
        c = state["counters"]
        self.env_steps = int(c["env_steps"])
        self.policy_version = int(c["policy_version"])
        self.duplicates = int(c["duplicates"])
        self.gaps = int(c["gaps"])
        self._last_seq = {int(k): int(v) for k, v in c["last_seq"].items()}


# ============================================================================ loops


def train_online(env: Any, learner: Learner, num_steps: int, *, seed: Optional[int] = None,
                 callback: Any = None) -> Dict[str, List[float]]:
    """Run ``num_steps`` env steps: act (uniformly random for the first ``random_steps``
    steps counted over the learner's life, then the stochastic policy), feed each transition to
    the learner. ``callback(step, learner, info)`` is called after every step; ``info`` holds the
    latest metrics and finished-episode returns. Returns ``{"episode_returns": [...]}``."""
    agent = learner.agent
    cfg = agent.config
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    ep_ret, returns, metrics = 0.0, [], None
    low = np.broadcast_to(agent.action_space.low, agent.action_space.shape)
    high = np.broadcast_to(agent.action_space.high, agent.action_space.shape)
    for _ in range(num_steps):
        step = learner.env_steps
        if step < cfg.random_steps:
            action = agent.snap_gripper(rng.uniform(low, high).astype(agent.action_space.dtype))
        else:
            action = agent.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        m = learner.add_transition(Transition(obs, action, float(reward), next_obs,
                                              bool(terminated), bool(truncated), seq=step))
        metrics = m if m is not None else metrics
        ep_ret += float(reward)
        if terminated or truncated:
            returns.append(ep_ret)
            ep_ret = 0.0
            obs, _ = env.reset()
        else:
            obs = next_obs
        if callback is not None:
            callback(step, learner, {"metrics": metrics, "episode_returns": returns})
    return {"episode_returns": returns}


def evaluate(env: Any, agent: SACAgent, episodes: int = 5, *, seed: Optional[int] = None,
             deterministic: bool = True) -> float:
    """Mean undiscounted return over ``episodes`` (deterministic actions by default)."""
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=None if seed is None else seed + i)
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(agent.act(obs, deterministic=deterministic))
            total += float(r)
            done = term or trunc
    return total / episodes
