"""``serl-ctrl train --algo consistency-ac``: Consistency-AC (Ding & Jin 2024), offline to online.

1. **Offline.** A consistency actor (an ordinary :class:`ConsistencyPolicy`, built exactly as
   ``--algo consistency`` builds it) and the SAC agent's critic ensemble are trained on the
   demonstrations with BC + Q (:class:`~serl_ctrl.agents.consistency.ConsistencyAC`); rewards and
   terminations come from the recorded episodes (record them with the reward the run should use,
   e.g. ``serl-ctrl demos --reward dense``).
2. **Online** (``online_steps > 0``). The actor acts in the task through the runtime's chunk queue
   (one inference per ``n_action_steps`` env steps); its exploration is the consistency sampler's own
   noise (a fresh draw per chunk, seeded per episode). Every completed episode joins the online data;
   after every env step ``utd`` Consistency-AC updates run on RLPD-style batches (``demo_fraction``
   from the demonstrations, the rest from online episodes; all-demo until the first episode ends).
   A fixed number of updates per env step, never "as fast as possible", so a run is reproducible.
   Every ``eval_every`` env steps (and once before the first) the policy is evaluated on fixed seeds
   (10000, 10001, ...; the sampler's noise seeded per episode as in ``rollout_success``).
3. **Export.** The actor is saved and exported exactly as ``--algo consistency`` does it
   (:func:`serl_ctrl.agents.imitation_run.finish_run`: ``policy.onnx`` + model card, evaluated as
   deployed), so ``serl-ctrl eval --policy RUN/policy.onnx`` runs it like any other policy.

Run folder: ``model.{safetensors,json}`` (the actor), ``metrics.json``, and with an online phase
``metrics.csv`` (one row per evaluation), ``learning_curve.png`` and ``online_episodes/`` (every
completed online episode, a demos folder); then ``policy.onnx`` + ``policy.json``. While it runs,
``ckpt/`` holds checkpoints (``checkpoint_every`` offline updates apart, and online at the first
episode end after every ``checkpoint_every`` env steps, where the env and the recorder start
afresh); ``--resume`` continues from the newest to the same actor as an uninterrupted run.

Settings (``--set field=value``): the fields of :class:`ConsistencyACConfig` below, and every
:class:`~serl_ctrl.agents.consistency.ConsistencyConfig` field for the actor (``horizon``,
``denoiser``, ``lr`` ...). An unknown name is an error that lists both.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..utils.device import resolve_device
from .consistency import ConsistencyAC, ConsistencyConfig, ConsistencyPolicy
from .imitation import ChunkDataset, ConfigError, build_imitation, rollout_success, runtime_policy, save_trained
from .imitation_run import EVAL_SEED, finish_run

ALGO = "consistency-ac"

__all__ = ["ALGO", "ConsistencyACConfig", "split_overrides", "make_agent", "OnlineFinetuner", "RunState",
           "demo_rows", "mixed_batch", "train_consistency_ac", "run_consistency_ac"]


@dataclass(frozen=True)
class ConsistencyACConfig:
    """Consistency-AC settings beyond the actor's (``--set field=value``)."""

    eta: float = 1.0                         # weight of the Q term -Q(s, a_pi) / mean|Q|
    bc_weight: float = 1.0                   # weight of the consistency (BC) loss
    anchor_weight: float = 1.0               # weight of |a_pi - a_demo|^2 on the action Q scores (TD3+BC)
    cql_weight: float = 1.0                  # conservative critic: + w * mean(Q(s, a_pi) - Q(s, a_data)) (CQL)
    n_critics: int = 2                       # Q networks in the critic ensemble
    critic_hidden: tuple[int, ...] = (256, 256)
    critic_lr: float = 3e-4
    gamma: float = 0.99                      # per env step; a chunk's TD step discounts gamma^n_action_steps
    tau: float = 0.005                       # Polyak rate of the target critics
    online_steps: int = 0                    # env steps of online fine-tuning (0 = offline only)
    utd: int = 1                             # Consistency-AC updates per online env step
    demo_fraction: float = 0.5               # share of each online-phase batch drawn from the demos
    eval_every: int = 1000                   # online env steps between evaluations

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{ALGO} field {name}={getattr(self, name)!r}: {rule}")

        object.__setattr__(self, "critic_hidden", tuple(self.critic_hidden))
        for name in ("n_critics", "utd", "eval_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "must be an integer >= 1")
        v = self.online_steps
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, "online_steps", "must be an integer >= 0")
        need(len(self.critic_hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in self.critic_hidden),
             "critic_hidden", "must be positive layer widths, e.g. 256,256 or [256, 256]")
        need(self.eta >= 0, "eta", "must be >= 0")
        need(self.bc_weight >= 0, "bc_weight", "must be >= 0")
        need(self.anchor_weight >= 0, "anchor_weight", "must be >= 0")
        need(self.cql_weight >= 0, "cql_weight", "must be >= 0")
        need(self.eta > 0 or self.bc_weight > 0 or self.anchor_weight > 0, "eta",
             "eta, bc_weight and anchor_weight cannot all be 0")
        need(self.critic_lr > 0, "critic_lr", "must be > 0")
        need(0.0 <= self.gamma < 1.0, "gamma", "must be in [0, 1)")
        need(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        need(0.0 <= self.demo_fraction <= 1.0, "demo_fraction", "must be in [0, 1]")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def split_overrides(overrides: Mapping[str, Any] | None) -> tuple[ConsistencyACConfig, dict[str, Any]]:
    """``--set`` values -> (the Consistency-AC settings, the actor's ``ConsistencyConfig`` overrides).

    Each field is checked here (type and range, the error names it); unknown names list the valid
    ones of both."""
    own = {f.name: f for f in fields(ConsistencyACConfig)}
    actor = {f.name for f in fields(ConsistencyConfig)}
    data = dict(overrides or {})
    unknown = sorted(k for k in data if k not in own and k not in actor)
    if unknown:
        raise ConfigError(f"unknown {ALGO} field(s) {', '.join(unknown)}; valid: {', '.join(sorted(own))}, "
                          f"and the actor's (ConsistencyConfig): {', '.join(sorted(actor))}")
    for k in ("teacher", "mode"):
        if data.get(k) not in (None, "", "ct"):
            raise ConfigError(f"{ALGO} field {k}={data[k]!r}: the actor is trained by consistency training "
                              "(mode='ct'), without a teacher")
    hints = typing.get_type_hints(ConsistencyACConfig)
    kwargs = {}
    for k in [k for k in data if k in own]:
        v, tp = data.pop(k), hints[k]
        if typing.get_origin(tp) is tuple:
            if isinstance(v, str):  # "256,256"
                try:
                    v = [int(x) for x in v.split(",") if x.strip()]
                except ValueError:
                    raise ConfigError(f"{ALGO} field {k}: expected integers like 256,256, got {v!r}") from None
            v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        elif tp is float:
            if isinstance(v, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
                try:
                    v = float(v)
                except ValueError:
                    pass
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{ALGO} field {k}: expected a number, got {v!r}")
            v = float(v)
        elif tp is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{ALGO} field {k}: expected an integer, got {v!r}")
        kwargs[k] = v
    cfg = ConsistencyACConfig(**kwargs)
    ConsistencyConfig.from_dict(data)  # validate the actor's fields now, before any demos are read
    return cfg, data


def make_agent(actor: ConsistencyPolicy, cfg: ConsistencyACConfig, seed: int = 0) -> ConsistencyAC:
    """The :class:`ConsistencyAC` learner that ``cfg`` describes, around ``actor``."""
    return ConsistencyAC(actor, n_critics=cfg.n_critics, critic_hidden=cfg.critic_hidden, gamma=cfg.gamma,
                         tau=cfg.tau, eta=cfg.eta, bc_weight=cfg.bc_weight, anchor_weight=cfg.anchor_weight,
                         cql_weight=cfg.cql_weight, critic_lr=cfg.critic_lr, seed=seed)


def demo_rows(online: ChunkDataset | None, batch_size: int, demo_fraction: float) -> int:
    """How many of a ``mixed_batch``'s rows (its first ones) come from the demos."""
    return batch_size if online is None else int(round(batch_size * demo_fraction))


def mixed_batch(demo: ChunkDataset, online: ChunkDataset | None, batch_size: int, demo_fraction: float,
                rng: np.random.Generator) -> dict[str, Any]:
    """RLPD's symmetric sampling: ``round(batch_size * demo_fraction)`` windows from the demos (the
    first rows) and the rest from the online data (all from the demos while there is none)."""
    n_demo = demo_rows(online, batch_size, demo_fraction)
    parts = [d.sample(n, rng) for d, n in ((demo, n_demo), (online, batch_size - n_demo)) if n > 0]
    if len(parts) == 1:
        return parts[0]

    def cat(a, b):
        if isinstance(a, dict):
            return {k: cat(a[k], b[k]) for k in a}
        return np.concatenate([a, b])

    return cat(*parts)


class OnlineFinetuner:
    """The online phase (module docstring, 2): acting, collecting episodes, updating, evaluating.

    ``run()`` returns its summary; ``online_episodes`` (the completed ones) and ``rows`` (the
    evaluations) stay readable afterwards."""

    def __init__(self, agent: ConsistencyAC, demo: ChunkDataset, cfg: ConsistencyACConfig, task: str, *,
                 backend: str = "mujoco", seed: int = 0, eval_episodes: int = 20, total_updates: int | None = None,
                 progress: Callable | None = None, episodes_dir: str | Path | None = None) -> None:
        from ..envs import make_env
        from .imitation import obs_mode_for

        self.agent, self.demo, self.cfg, self.task, self.backend = agent, demo, cfg, task, backend
        self.seed, self.eval_episodes, self.progress = int(seed), int(eval_episodes), progress
        policy = agent.actor
        self.obs_mode = obs_mode_for(policy, task)
        self.reward = demo.metadata.get("reward") or "sparse"
        self.env = make_env(task, backend=backend, obs=self.obs_mode, reward=self.reward)
        missing = [k for k in policy.obs_keys if k not in self.env.observation_space.spaces]
        if missing:
            raise ValueError(f"task {task!r} ({self.obs_mode}) has no observation(s) {missing} that the demos have: "
                             "record the demos on the task the run fine-tunes on")
        self.runner = runtime_policy(policy, control_hz=self.env.unwrapped.control_hz)
        self.online_episodes: list = []
        self.online_data: ChunkDataset | None = None
        self.rows: list[dict[str, Any]] = []
        self.total_updates = total_updates
        self.gen = torch.Generator().manual_seed(self.seed + 1)
        self.rng = np.random.default_rng([self.seed, 1])
        self.episodes_dir = Path(episodes_dir) if episodes_dir is not None else None
        self.step = 0      # online env steps done
        self.episode = 0   # index of the episode being collected
        self._wall0 = 0.0  # seconds spent before a resume (evaluation rows count from the run's start)
        self._start: float | None = None  # perf_counter when run() began
        self._policy_gen: torch.Tensor | None = None  # the actor's noise generator at the last checkpoint

    # --- checkpoint form (only at episode boundaries: the env and the recorder start afresh there) --------
    def state_dict(self) -> dict[str, Any]:
        """Counters, evaluation rows and generators; the completed episodes are files in ``episodes_dir``."""
        if self.episodes_dir is None:
            raise ValueError("checkpointing the online phase needs episodes_dir (the online episodes are kept there)")
        return {"step": self.step, "episode": self.episode, "n_episodes": len(self.online_episodes),
                "rows": self.rows, "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state,
                "policy_gen": self.agent.actor._gen.get_state(), "wall_s": self._wall0 + self._elapsed()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from ..data.episodes import list_episodes, load_episode

        n = int(state["n_episodes"])
        paths = list_episodes(self.episodes_dir) if self.episodes_dir is not None and n else []
        if len(paths) < n:
            raise FileNotFoundError(f"{self.episodes_dir}: {len(paths)} online episodes, the checkpoint counts {n}")
        self.online_episodes, self.online_data = [load_episode(path) for path in paths[:n]], None
        if n:
            self._rebuild_online_data()
        self.step, self.episode = int(state["step"]), int(state["episode"])
        self.rows = [dict(r) for r in state["rows"]]
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]
        self._policy_gen = state["policy_gen"]
        self._wall0 = float(state["wall_s"])

    def _elapsed(self) -> float:
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def _metadata(self, episode: int) -> dict[str, Any]:
        from ..data.episodes import make_metadata

        space = self.env.action_space
        return make_metadata(task=self.task, backend=self.backend, obs_mode=self.obs_mode,
                             seed=self._env_seed(episode), control_hz=self.env.unwrapped.control_hz,
                             action_low=space.low, action_high=space.high, source=f"{ALGO}_online",
                             reward=self.reward)

    def _env_seed(self, episode: int) -> int:
        return self.seed * 1_000_003 + episode

    def _add_episode(self, episode) -> None:
        if self.episodes_dir is not None:
            from ..data.episodes import episode_path, save_episode

            self.episodes_dir.mkdir(parents=True, exist_ok=True)
            save_episode(episode_path(self.episodes_dir, len(self.online_episodes)), episode)  # atomic
        self.online_episodes.append(episode)
        self._rebuild_online_data()

    def _rebuild_online_data(self) -> None:
        policy = self.agent.actor
        data = ChunkDataset(self.online_episodes, policy.obs_keys, policy.n_obs_steps, policy.horizon)
        data.prepare_td(self.agent.k, self.agent.gamma)
        self.online_data = data

    def evaluate(self, env_steps: int, info: Mapping[str, float]) -> dict[str, Any]:
        ev = rollout_success(self.agent.actor, self.task, self.backend, self.eval_episodes, seed=EVAL_SEED,
                             obs_mode=self.obs_mode)
        row = {"env_steps": env_steps, "updates": self.agent.updates, "success_rate": ev["success_rate"],
               "online_episodes": len(self.online_episodes),
               "online_transitions": sum(ep.length for ep in self.online_episodes),
               "wall_s": round(self._wall0 + self._elapsed(), 2), **{k: float(v) for k, v in info.items()}}
        self.rows.append(row)
        return row

    def run(self, checkpoint: Callable[[], None] | None = None, checkpoint_every: int = 0) -> dict[str, Any]:
        """Run (or, after ``load_state_dict``, continue) the online phase. ``checkpoint()`` is called at
        the first episode boundary after every ``checkpoint_every`` env steps."""
        from ..data.episodes import EpisodeRecorder

        cfg, agent, policy = self.cfg, self.agent, self.agent.actor
        total = self.total_updates or agent.updates + (cfg.online_steps - self.step) * cfg.utd
        bar = self.progress(total=cfg.online_steps, desc=f"online {ALGO}",
                            **({"initial": self.step} if self.step else {})) if self.progress else None
        self._start = time.perf_counter()
        info: dict[str, float] = {}
        if self.step == 0:
            self.evaluate(0, info)
        recorder = EpisodeRecorder(self._metadata(self.episode))
        last_checkpoint = self.step

        def begin():
            obs, _ = self.env.reset(seed=self._env_seed(self.episode))
            policy.seed(self._env_seed(self.episode))  # the exploration noise of this episode's chunks
            self.runner.reset()
            recorder.reset(obs)
            return obs

        obs = begin()
        if self._policy_gen is not None:  # resumed: evaluations since the episode began moved the generator
            policy._gen.set_state(self._policy_gen)
            self._policy_gen = None
        try:
            while self.step < cfg.online_steps:
                self.step += 1
                policy.eval()
                action = self.runner.act(obs)
                obs, reward, terminated, truncated, step_info = self.env.step(action)
                recorder.step(action, obs, float(reward), bool(terminated), bool(truncated), step_info)
                ended = terminated or truncated
                if ended:
                    self._add_episode(recorder.finish())
                    self.episode += 1
                    recorder = EpisodeRecorder(self._metadata(self.episode))
                    obs = begin()
                policy.train()
                for _ in range(cfg.utd):
                    raw = mixed_batch(self.demo, self.online_data, policy.config.batch_size, cfg.demo_fraction,
                                      self.rng)
                    batch = policy.batch_to_torch(raw, self.gen, augment=True)
                    n_bc = demo_rows(self.online_data, policy.config.batch_size, cfg.demo_fraction)
                    info = agent.update(batch, self.gen, agent.updates, total, n_bc=n_bc)
                policy.eval()
                if self.step % cfg.eval_every == 0 or self.step == cfg.online_steps:
                    row = self.evaluate(self.step, info)
                    if bar is not None:
                        bar.set_postfix(success=f"{row['success_rate']:.0%}", episodes=row["online_episodes"])
                if bar is not None:
                    bar.update(1)
                if (checkpoint is not None and checkpoint_every and ended and self.step < cfg.online_steps
                        and self.step - last_checkpoint >= checkpoint_every):
                    checkpoint()
                    last_checkpoint = self.step
        finally:
            if bar is not None:
                bar.close()
            self.env.close()
        last = self.rows[-1]
        return {"env_steps": cfg.online_steps, "online_episodes": last["online_episodes"],
                "online_transitions": last["online_transitions"], "online_success_rate": last["success_rate"],
                "offline_success_rate": self.rows[0]["success_rate"],
                "online_wall_s": round(self._wall0 + self._elapsed(), 2)}


class RunState:
    """A Consistency-AC run in checkpoint form: the agent, the offline phase's generators and step,
    and the online phase's state once it has begun (``save_checkpoint`` / ``resume_run``)."""

    def __init__(self, agent: ConsistencyAC) -> None:
        self.agent = agent
        self.gen = torch.Generator().manual_seed(agent.seed)  # as ConsistencyAC.train seeds them
        self.rng = np.random.default_rng(agent.seed)
        self.offline_step = 0
        self.offline_info: dict[str, float] = {}
        self.tuner: OnlineFinetuner | None = None
        self.online_state: Mapping[str, Any] | None = None  # loaded, applied when the tuner is built

    def state_dict(self) -> dict[str, Any]:
        d = {"agent": self.agent.state_dict(), "offline_step": self.offline_step, "offline_info": self.offline_info,
             "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state}
        if self.tuner is not None:
            d["online"] = self.tuner.state_dict()
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.offline_step = int(state["offline_step"])
        self.offline_info = {k: float(v) for k, v in state["offline_info"].items()}
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]
        self.online_state = state.get("online")


def train_consistency_ac(demos: str | Path, out: str | Path, overrides: Mapping[str, Any] | None = None, *,
                         task: str | None = None, backend: str = "mujoco", steps: int | None = None, seed: int = 0,
                         eval_episodes: int = 20, eval_every: int | None = None, device: str = "auto",
                         progress: Callable | None = None, checkpoint_every: int = 0,
                         resume: bool = False) -> dict[str, Any]:
    """Offline Consistency-AC on ``demos``, then (``online_steps > 0``) online fine-tuning on ``task``
    (default: the demos' task). Writes the actor to ``out/model`` and returns what
    ``train_imitation`` returns (``checkpoint``, ``metrics``), so ``finish_run`` exports it.

    ``steps``: offline updates (default: the actor config's ``train_steps``). ``device``: where the
    updates and the online inference run (``auto``, ``cpu``, ``cuda``); draws come from CPU
    generators seeded by ``seed``, and the saved actor is CPU float32 either way.

    ``checkpoint_every`` > 0 writes a checkpoint to ``out/ckpt`` every that many offline updates and,
    online, at the first episode end after every that many env steps (completed online episodes are
    kept in ``out/online_episodes``); ``resume`` continues from the newest, to the same actor as a
    run that was never interrupted (same machine and thread count)."""
    from .checkpoint import latest_checkpoint, resume_run, save_checkpoint

    data = dict(overrides or {})
    if eval_every is not None:
        data["eval_every"] = eval_every
    cfg, actor_overrides = split_overrides(data)
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    out = Path(out)
    ckpt_dir, episodes_dir = out / "ckpt", out / "online_episodes"
    if not resume and latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    policy, dataset = build_imitation("consistency", demos, actor_overrides, seed=seed)
    assert isinstance(policy, ConsistencyPolicy)
    steps = policy.config.train_steps if steps is None else int(steps)
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    task = task or dataset.metadata.get("task")
    if cfg.online_steps and not task:
        raise ValueError(f"{ALGO}: online_steps={cfg.online_steps} needs a task: pass --task")
    agent = make_agent(policy, cfg, seed)
    total = steps + cfg.online_steps * cfg.utd
    state = RunState(agent)
    run_id = {"algo": ALGO, "steps": steps, "seed": seed, "task": task, "backend": backend,
              "eval_episodes": eval_episodes, "config": cfg.to_dict(), "actor": policy.config.to_dict()}
    if resume:
        resume_run(ckpt_dir, state, run_id)
    elif cfg.online_steps:
        shutil.rmtree(episodes_dir, ignore_errors=True)  # episodes of an earlier run that never checkpointed

    def save() -> None:
        save_checkpoint(ckpt_dir, state, step=agent.updates, extra=run_id)

    def after_offline_step(n: int, info: Mapping[str, float]) -> None:
        state.offline_step, state.offline_info = n, {k: float(v) for k, v in info.items()}
        if checkpoint_every and n % checkpoint_every == 0 and (n < steps or cfg.online_steps):
            save()

    start = time.perf_counter()
    agent.to(resolve_device(device))
    try:
        agent.train(dataset, steps, progress=progress, total_steps=total, start=state.offline_step, gen=state.gen,
                    rng=state.rng, after_step=after_offline_step)
        offline = {"steps": steps, **state.offline_info}  # the last offline update's, resumed or not
        offline_wall = time.perf_counter() - start
        online: dict[str, Any] = {}
        if cfg.online_steps:
            tuner = OnlineFinetuner(agent, dataset, cfg, task, backend=backend, seed=seed,
                                    eval_episodes=eval_episodes, total_updates=total, progress=progress,
                                    episodes_dir=episodes_dir)
            if state.online_state is not None:
                tuner.load_state_dict(state.online_state)
            state.tuner = tuner
            online = tuner.run(checkpoint=save if checkpoint_every else None, checkpoint_every=checkpoint_every)
            out.mkdir(parents=True, exist_ok=True)
            _write_csv(out / "metrics.csv", tuner.rows)
            from .train_sac import plot_learning_curve

            plot_learning_curve(tuner.rows, out / "learning_curve.png",
                                f"Consistency-AC {task}: offline {steps} updates, then online, seed {seed}")
    finally:
        agent.to("cpu")
    metrics = {"steps": steps, "updates": agent.updates, "env_steps": online.get("env_steps", 0),
               **{k: v for k, v in offline.items() if k != "steps"}, **online,
               "offline_wall_s": round(offline_wall, 2), "wall_s": round(time.perf_counter() - start, 2),
               "n_samples": len(dataset), "n_episodes": dataset.n_episodes, "seed": seed, "config": cfg.to_dict()}
    policy.metadata["consistency_ac"] = {**cfg.to_dict(), "offline_steps": steps}
    saved = save_trained(policy, out, ALGO, metrics)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the actor is written: nothing left to resume
    return saved


def run_consistency_ac(demos: str | Path, out: str | Path, *, task: str | None = None, backend: str = "mujoco",
                       steps: int | None = None, seed: int = 0, overrides: Mapping[str, Any] | None = None,
                       eval_episodes: int = 20, eval_every: int | None = None, progress: Callable | None = None,
                       command: str | None = None, export: bool = True, device: str = "auto",
                       checkpoint_every: int = 0, resume: bool = False) -> dict:
    """Train (offline, then online), evaluate and export: ``serl-ctrl train --algo consistency-ac``."""
    trained = train_consistency_ac(demos, out, overrides, task=task, backend=backend, steps=steps, seed=seed,
                                   eval_episodes=eval_episodes, eval_every=eval_every, device=device,
                                   progress=progress, checkpoint_every=checkpoint_every, resume=resume)
    m = trained["metrics"]
    return finish_run(ALGO, trained, out, demos, task=task, backend=backend, eval_episodes=eval_episodes,
                      progress=progress, command=command, export=export,
                      extra={"offline_steps": m["steps"], "online_steps": m["env_steps"]})


def _write_csv(path: Path, rows: list[dict]) -> None:
    from ..utils.atomic import atomic_write_csv

    atomic_write_csv(path, rows, ("env_steps", "updates", "success_rate", "online_episodes", "online_transitions",
                                  "wall_s"))
