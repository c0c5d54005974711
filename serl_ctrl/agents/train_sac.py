"""Train SAC (RLPD choices, DrQ for pixels) on a Panda task or any gymnasium environment.

The one way to train, readable top to bottom: build the env and the learner, fill the demo buffer,
then loop env steps; every transition goes through ``Learner.add_transition`` (the same interface
an actor on another machine uses), which runs a fixed number of updates per env step. Every
``eval_every`` steps the deterministic policy is evaluated on fixed seeds; metrics go to
``metrics.csv`` and TensorBoard; checkpoints are atomic and a killed run resumes where it left off
(``resume=True``). At the end: ``learning_curve.png`` and ``policy.onnx`` with its model card.

Run folder::

    RUN/config.json       the run and SAC configuration
    RUN/checkpoints/      ckpt_<step>.{safetensors,json} (see agents/checkpoint.py)
    RUN/metrics.csv       one row per evaluation
    RUN/tb/               TensorBoard logs
    RUN/learning_curve.png
    RUN/policy.onnx + RUN/policy.json (model card)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, SACConfig
from .sac import Learner, SACAgent, Transition
from ..data.replay import ReplayBuffer
from ..utils.device import DEVICE_HELP, check_device_name, resolve_device

RUN_FIELDS_HELP = {
    "task": "serl_ctrl task (reach, pickcube, push, insert); or set env_id",
    "env_id": "any gymnasium id with Box or Dict-of-Box observations and Box actions",
    "backend": "mujoco or pybullet (serl_ctrl tasks only)",
    "obs": "state, pixels or both (serl_ctrl tasks only)",
    "reward": "sparse (1 on success) or dense (shaped) (serl_ctrl tasks only; demos must match)",
    "steps": "env steps to train for",
    "seed": "seed of the networks, the sampling and the training episodes",
    "demos": "folder of demonstration episodes (serl-ctrl demos) for the 50/50 demo batches",
    "eval_every": "env steps between evaluations",
    "eval_episodes": "episodes per evaluation (fixed seeds 10000, 10001, ...)",
    "checkpoint_every": "env steps between checkpoints",
    "intervention": "'none', or 'expert': a scripted human takes over when the arm strays (HIL-SERL)",
    "threads": "torch CPU threads",
    "device": DEVICE_HELP,
    "reward_classifier": "a trained reward classifier (serl-ctrl reward-classifier --out) as the training reward: "
                         "1 and the episode ends on predicted success; evaluation keeps the task's own success",
}


@dataclass(frozen=True)
class RunConfig:
    """What to train on and for how long; the agent's own settings are in ``sac``."""

    task: Optional[str] = "pickcube"
    env_id: Optional[str] = None
    backend: str = "mujoco"
    obs: str = "state"
    reward: str = "sparse"
    steps: int = 20_000
    seed: int = 0
    demos: Optional[str] = None
    eval_every: int = 2_000
    eval_episodes: int = 20
    checkpoint_every: int = 5_000
    intervention: str = "none"
    threads: int = 1
    device: str = "auto"
    reward_classifier: Optional[str] = None
    sac: SACConfig = field(default_factory=SACConfig)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"run.{name}={getattr(self, name)!r}: {rule}")

        need((self.task is None) != (self.env_id is None), "task", "set exactly one of task and env_id")
        need(self.backend in ("mujoco", "pybullet"), "backend", "must be mujoco or pybullet")
        need(self.obs in ("state", "pixels", "both"), "obs", "must be state, pixels or both")
        need(self.reward in ("sparse", "dense"), "reward", "must be sparse or dense")
        need(isinstance(self.steps, int) and self.steps >= 1, "steps", "must be an integer >= 1")
        need(isinstance(self.eval_every, int) and self.eval_every >= 1, "eval_every", "must be >= 1")
        need(isinstance(self.eval_episodes, int) and self.eval_episodes >= 1, "eval_episodes", "must be >= 1")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1, "checkpoint_every",
             "must be >= 1")
        need(self.intervention in ("none", "expert"), "intervention", "must be 'none' or 'expert'")
        need(isinstance(self.threads, int) and 1 <= self.threads <= 256, "threads", "must be in [1, 256]")
        try:
            check_device_name(self.device, "run.device")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        need(self.reward_classifier is None or (isinstance(self.reward_classifier, str) and self.reward == "sparse"),
             "reward_classifier", "must be a path, with reward='sparse' (the classifier's reward is sparse)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) run.{', run.'.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        if "sac" in data and not isinstance(data["sac"], SACConfig):
            data["sac"] = SACConfig.from_dict(data["sac"] or {})
        return cls(**data)

    @classmethod
    def load(cls, yaml_path: Optional[str] = None, values: Optional[Mapping[str, Any]] = None,
             overrides: Sequence[str] = ()) -> "RunConfig":
        """YAML file, then explicit ``values`` (command-line flags), then ``sac.x=y`` overrides."""
        import yaml

        data: dict = {}
        if yaml_path is not None:
            path = Path(yaml_path)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, Mapping):
                raise ConfigError(f"{path}: must hold a mapping of run fields")
            data.update(loaded)
        explicit = {k: v for k, v in (values or {}).items() if v is not None}
        if "env_id" in explicit and "task" not in explicit:
            data["task"] = None  # --env replaces the default (or YAML) task
        data.update(explicit)
        sac = SACConfig.from_dict(data.pop("sac", {}) or {})
        run_overrides = [o for o in overrides if not o.startswith("sac.")]
        if run_overrides:
            raise ConfigError(f"overrides must name sac fields (sac.utd=8); set run fields with flags: {run_overrides}")
        sac = SACConfig.from_overrides(list(overrides), base=sac)
        return cls.from_dict({**data, "sac": sac})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sac"}
        d["sac"] = self.sac.to_dict()
        return d


# --- pieces ----------------------------------------------------------------------------------------


def make_train_env(cfg: RunConfig, learned_reward: bool = True):
    """The run's environment; with ``cfg.reward_classifier`` (and ``learned_reward``) its reward and
    termination come from the classifier, as on a robot (``info["success"]`` stays the task's)."""
    import gymnasium as gym

    learned = learned_reward and cfg.reward_classifier is not None
    if cfg.env_id is not None:
        import serl_ctrl.envs  # noqa: F401  (our ids are valid too)

        env = gym.make(cfg.env_id)
    else:
        from ..envs import make_env

        # With a learned reward the task's own success must not end episodes either.
        env = make_env(cfg.task, backend=cfg.backend, obs=cfg.obs, reward=cfg.reward,
                       **({"terminate_on_success": False} if learned else {}))
    if learned:
        from ..envs.wrappers import RewardModelWrapper
        from .reward_classifier import load_reward_classifier

        classifier = load_reward_classifier(cfg.reward_classifier)
        classifier.check_space(env.observation_space)  # ValueError naming a missing key
        env = RewardModelWrapper(env, classifier, threshold=classifier.threshold)
    return env


def demo_buffer(demos: str, env, extra_capacity: int = 0, reward: str | None = None) -> ReplayBuffer:
    """A replay buffer holding every transition of the episodes in ``demos``, with room for
    ``extra_capacity`` more (human interventions join the demonstrations, HIL-SERL).

    The episodes must match the environment: same observation keys and shapes, same action size.
    """
    from ..data.episodes import load_episodes

    episodes = load_episodes(demos)
    space = env.observation_space
    keys = list(space.spaces) if hasattr(space, "spaces") else ["obs"]
    for i, ep in enumerate(episodes):
        recorded = ep.metadata.get("reward", "sparse")
        if reward is not None and recorded != reward:
            raise ValueError(f"{demos}: episode {i} was recorded with {recorded} rewards, the run uses {reward} "
                             f"(record with `serl-ctrl demos --reward {reward}`)")
        if ep.actions.shape[1] != env.action_space.shape[0]:
            raise ValueError(f"{demos}: episode {i} has {ep.actions.shape[1]}-d actions, the env needs "
                             f"{env.action_space.shape[0]}")
        for key in keys:
            if key not in ep.observations:
                raise ValueError(f"{demos}: episode {i} lacks observation {key!r} (recorded with obs="
                                 f"{ep.metadata.get('obs_mode')!r}; record demos with the training obs mode)")
            shape = space[key].shape if hasattr(space, "spaces") else space.shape
            if ep.observations[key].shape[1:] != shape:
                raise ValueError(f"{demos}: episode {i} observation {key!r} has shape "
                                 f"{ep.observations[key].shape[1:]}, the env's is {shape}")
        # Only the keys the environment has (a "both" recording can feed a "pixels" run).
        ep.observations = {k: ep.observations[k] for k in keys}
    return ReplayBuffer.from_episodes(space, env.action_space, episodes, extra_capacity=extra_capacity)


def evaluate_agent(agent: SACAgent, env, episodes: int, seed: int = 10_000) -> dict:
    """Deterministic policy on fixed seeds: success rate and mean return."""
    successes, returns = 0, []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, success = 0.0, False
        while True:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs, deterministic=True))
            total += float(reward)
            success = success or bool(info.get("success", info.get("is_success", False)))
            if terminated or truncated:
                break
        successes += int(success)
        returns.append(total)
    return {"success_rate": successes / episodes, "mean_return": float(np.mean(returns))}


def plot_learning_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    steps = [r["env_steps"] for r in rows]
    ax.plot(steps, [r["success_rate"] for r in rows], marker="o", label="success rate")
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (deterministic policy)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# --- the loop --------------------------------------------------------------------------------------


def train_sac(cfg: RunConfig, out: str | Path, resume: bool = False, progress: Optional[Callable] = None,
              command: Optional[str] = None, export: bool = True, stop_at: Optional[float] = None) -> dict:
    """Train, evaluate, checkpoint and export; returns the summary ``serl-ctrl train --json`` prints.

    ``stop_at``: end the run early at the first evaluation whose success rate reaches it (benchmarks
    that only measure the time to a success level)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    config_path = out / "config.json"
    if config_path.exists() and not resume and latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    from ..utils.atomic import atomic_write_text

    atomic_write_text(config_path, json.dumps(cfg.to_dict(), indent=2) + "\n")

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    env, eval_env = make_train_env(cfg), make_train_env(cfg, learned_reward=False)  # evaluate true success
    agent = SACAgent(env.observation_space, env.action_space, cfg.sac, seed=cfg.seed,
                     device=resolve_device(cfg.device, "run.device"))
    extra = cfg.steps if cfg.intervention != "none" else 0
    demos = demo_buffer(cfg.demos, env, extra, cfg.reward if cfg.task else None) if cfg.demos else None
    # The run never stores more than `steps` online transitions: a buffer sized to the run keeps
    # the default capacity (1M) from refusing a pixel run that would never fill it.
    online = ReplayBuffer(env.observation_space, env.action_space, min(cfg.sac.replay_capacity, cfg.steps))
    learner = Learner(agent, online_buffer=online, demo_buffer=demos, seed=cfg.seed)
    if cfg.intervention == "expert":
        from ..envs.wrappers import ExpertTeleop, InterventionWrapper

        env = InterventionWrapper(env, ExpertTeleop(env))

    state = {"episodes": 0, "rows": [], "wall_s": 0.0, "interventions": 0}
    if resume:
        latest = latest_checkpoint(ckpt_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        meta = load_checkpoint(latest, learner)
        state.update(meta["extra"]["trainer"])

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"), purge_step=learner.env_steps or None)
    rng = np.random.default_rng([cfg.seed, learner.env_steps])
    low, high = env.action_space.low, env.action_space.high
    bar = progress(total=cfg.steps, initial=learner.env_steps, desc="train sac") if progress else None
    start = time.perf_counter() - state["wall_s"]
    window_t, window_steps, window_updates = time.perf_counter(), learner.env_steps, learner.policy_version
    last_success = state["rows"][-1]["success_rate"] if state["rows"] else float("nan")

    def new_episode():
        state["episodes"] += 1
        return env.reset(seed=cfg.seed * 1_000_003 + state["episodes"])[0]

    obs = new_episode()
    metrics: dict = {}
    while learner.env_steps < cfg.steps:
        if learner.env_steps < cfg.sac.random_steps:
            action = agent.snap_gripper(rng.uniform(low, high).astype(np.float32))
        else:
            action = agent.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        executed = info.get("executed_action", action)
        t = Transition(obs, executed, float(reward), next_obs, bool(terminated), bool(truncated),
                       seq=learner.env_steps)
        if info.get("intervened"):
            state["interventions"] += 1
            if learner.demo is not None:  # HIL-SERL: human corrections are demonstrations too
                learner.demo.add(obs, executed, float(reward), next_obs, bool(terminated), bool(truncated))
        m = learner.add_transition(t)
        metrics = m or metrics
        obs = new_episode() if (terminated or truncated) else next_obs
        steps = learner.env_steps

        if steps % cfg.eval_every == 0 or steps == cfg.steps:
            ev = evaluate_agent(agent, eval_env, cfg.eval_episodes)
            row = {"env_steps": steps, "updates": learner.policy_version, **ev,
                   "wall_s": round(time.perf_counter() - start, 2), "interventions": state["interventions"],
                   **{k: float(v) for k, v in metrics.items() if np.isscalar(v)}}
            state["rows"].append(row)
            last_success = ev["success_rate"]
            for k, v in row.items():
                if k != "env_steps" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, steps)
            _write_csv(out / "metrics.csv", state["rows"])
            if stop_at is not None and ev["success_rate"] >= stop_at:
                state["wall_s"] = time.perf_counter() - start
                save_checkpoint(ckpt_dir, learner, extra={"trainer": state, "run": cfg.to_dict()})
                break
        if steps % cfg.checkpoint_every == 0 or steps == cfg.steps:
            state["wall_s"] = time.perf_counter() - start
            save_checkpoint(ckpt_dir, learner, extra={"trainer": state, "run": cfg.to_dict()})
        if bar is not None:
            bar.update(1)
            now = time.perf_counter()
            if now - window_t > 2.0:
                bar.set_postfix(env_sps=f"{(steps - window_steps) / (now - window_t):.0f}",
                                ups=f"{(learner.policy_version - window_updates) / (now - window_t):.0f}",
                                success=f"{last_success:.0%}")
                window_t, window_steps, window_updates = now, steps, learner.policy_version
    if bar is not None:
        bar.close()
    writer.close()
    wall = time.perf_counter() - start
    title = f"SAC {cfg.task or cfg.env_id} ({cfg.obs}{', demos' if cfg.demos else ''}), seed {cfg.seed}"
    plot_learning_curve(state["rows"], out / "learning_curve.png", title)
    result = {"env_steps": learner.env_steps, "updates": learner.policy_version,
              "success_rate": state["rows"][-1]["success_rate"], "wall_s": round(wall, 1),
              "checkpoint": str(latest_checkpoint(ckpt_dir)), "run": str(out),
              "steps_to_90": next((r["env_steps"] for r in state["rows"] if r["success_rate"] >= 0.9), None)}
    env.close()
    if export:
        result["policy"] = str(export_sac_policy(agent, eval_env, cfg, out / "policy.onnx", state["rows"][-1],
                                                 command=command))
    eval_env.close()
    return result


def sac_policy_spec(env, cfg: RunConfig, extra: Mapping[str, Any]):
    """The ``PolicySpec`` of a SAC run's deployed actor (training's export and ``serl-ctrl export``
    share it): the env's spaces and control rate, the run's task, obs mode, env id and backend."""
    from ..runtime.spec import PolicySpec

    return PolicySpec.from_spaces(
        env.observation_space, env.action_space, algo="sac", task=cfg.task, obs_mode=cfg.obs if cfg.task else None,
        control_hz=float(getattr(env.unwrapped, "control_hz", env.metadata.get("render_fps") or 10)),
        extra={**extra, "env_id": cfg.env_id, "backend": cfg.backend})


def export_sac_policy(agent: SACAgent, env, cfg: RunConfig, path: Path, last_eval: dict,
                      command: Optional[str] = None) -> Path:
    """The deterministic actor as ONNX, with a model card holding the last evaluation."""
    from ..export.onnx_export import export_onnx, git_commit, write_card
    from ..runtime.onnx_policy import OnnxPolicy

    spec = sac_policy_spec(env, cfg, {"command": command, "commit": git_commit(), "env_steps": last_eval.get("env_steps")})
    obs, _ = env.reset(seed=0)
    recorded = [{k: np.asarray(v)[None] for k, v in (obs.items() if isinstance(obs, dict) else [("obs", obs)])}]
    report = export_onnx(agent.policy_state(), spec, path, recorded_obs=recorded)
    policy = OnnxPolicy(path, verify_card=False)
    latency = []
    for _ in range(50):
        policy.reset()
        policy.act(obs if isinstance(obs, dict) else {"obs": obs})
        latency.append(policy.last_infer_ms)
    write_card(path, algo="sac", task=cfg.task, env_id=cfg.env_id, obs=cfg.obs, backend=cfg.backend,
               success_rate=last_eval["success_rate"], eval_episodes=cfg.eval_episodes, eval_seeds="10000+",
               infer_ms_p50=float(np.percentile(latency, 50)), parity_max_abs_diff=report.parity_max_abs_diff,
               command=command, commit=git_commit())
    return path


def _write_csv(path: Path, rows: list[dict]) -> None:
    from ..utils.atomic import atomic_write_csv

    atomic_write_csv(path, rows, ("env_steps", "updates", "success_rate", "mean_return", "wall_s", "interventions"))
