"""Record scripted demonstrations: run a task's expert in an environment and save episodes.

Every step is labelled with the expert's current language instruction, so the same recordings
train state and pixel policies, diffusion and consistency policies, and language-conditioned
policies. Episode ``i`` is reset with seed ``seed + i``, so a recording is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..envs import make_env
from .episodes import Episode, EpisodeRecorder, make_metadata, write_episodes_dir


@dataclass
class DemoReport:
    """What a recording produced; ``success_rate`` counts every attempt, kept or not."""

    task: str
    backend: str
    attempts: int = 0
    successes: int = 0
    written: list[Path] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "backend": self.backend,
            "episodes": self.attempts,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "written": len(self.written),
            "mean_length": float(np.mean(self.lengths)) if self.lengths else 0.0,
            "wall_s": round(self.wall_s, 3),
        }


def expert_episode(env, seed: int, noise: float = 0.0, recorder: EpisodeRecorder | None = None,
                   on_frame: Callable[[np.ndarray], None] | None = None, detour: float = 0.0,
                   perturb: Callable | None = None, fumble: float = 0.0) -> tuple[bool, int]:
    """Run the task's scripted expert for one episode; returns (success, steps).

    ``env`` is a (possibly wrapped) Panda environment; the expert reads its privileged state.
    With ``noise`` > 0, Gaussian noise (in action units) is added to the expert's moves. With
    ``detour`` > 0, that fraction of the episodes starts with a move to a point 1.5-3 cm beside the
    first waypoint (:func:`~serl_ctrl.envs.tasks.base.with_detour`), so the labels include the small
    lateral corrections ("move a bit to the left") a language-conditioned policy must follow.
    ``perturb(env, step, rng)`` (e.g. :class:`~serl_ctrl.envs.perturb.ObjectJump`) is called before
    every step with its own generator; the expert sees the result and recovers.
    With ``fumble`` > 0, that fraction of the episodes has the gripper close on nothing for two steps
    at a random step between 4 and 15 (labelled with the script's closing instruction); the script
    then goes on and opens it again, so the labels include recoveries from a premature grasp.
    """
    base = env.unwrapped
    expert = base.task.expert()
    if detour > 0:
        drng = np.random.default_rng([seed, 1])  # its own stream: detour=0 records exactly as before
        if drng.random() < detour:
            from ..envs.tasks.base import with_detour

            angle, radius = drng.uniform(0.0, 2 * np.pi), drng.uniform(0.015, 0.03)
            expert = with_detour(expert, np.array([radius * np.cos(angle), radius * np.sin(angle), 0.0]))
    expert.noise = noise
    expert.reset()
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    if recorder is not None:
        recorder.reset(obs)
    if on_frame is not None:
        on_frame(env.render())
    steps = 0
    prng = np.random.default_rng([seed, 2])
    fumble_at, closing = -10, ""
    if fumble > 0:
        frng = np.random.default_rng([seed, 4])
        closing = next((s.instruction for s in expert.segments if s.gripper > 0), "")
        if closing and frng.random() < fumble:
            fumble_at = int(frng.integers(4, 16))
    while True:
        if perturb is not None:
            perturb(env, steps, prng)
        if fumble_at <= steps < fumble_at + 2:
            move, instruction = np.array([0.0, 0.0, 0.0, 1.0], np.float32), closing
        else:
            move, instruction = expert.act(base.task_state(), rng)
        action = np.zeros(env.action_space.shape, dtype=np.float32)
        action[:3], action[-1] = move[:3], move[3]  # the expert never turns the gripper (yaw = 0)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        if recorder is not None:
            recorder.step(action, obs, reward, terminated, truncated, info, instruction=instruction)
        if on_frame is not None:
            on_frame(env.render())
        if terminated or truncated:
            return bool(info["success"]), steps


def record_demonstrations(
    task: str,
    out: str | Path | None,
    n: int,
    backend: str = "mujoco",
    obs: str = "state",
    seed: int = 0,
    noise: float = 0.0,
    keep_failures: bool = False,
    image_size: int = 128,
    reward: str = "sparse",
    progress: Callable | None = None,
    detour: float = 0.0,
    jump: float = 0.0,
    fumble: float = 0.0,
) -> DemoReport:
    """Record ``n`` expert episodes of ``task``; write them to ``out`` (None: record nothing).

    Failed attempts are counted in the success rate and, unless ``keep_failures``, not written
    (failures are useful as negatives for a reward classifier, not as demonstrations).
    ``detour``: fraction of episodes that start with a small detour (see :func:`expert_episode`).
    ``jump``: fraction of episodes in which the object jumps 5-7 cm away as the gripper comes down on
    it (:class:`~serl_ctrl.envs.perturb.ObjectJump`, at a random height of 3-10 cm or lower), so the
    labels include recoveries.
    ``fumble``: fraction of episodes in which the gripper closes on nothing for two steps, then the
    script recovers (see :func:`expert_episode`).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    env = make_env(task, backend=backend, obs=obs, image_size=image_size, reward=reward)
    base = env.unwrapped
    report = DemoReport(task=base.task.name, backend=backend)
    start = time.perf_counter()
    bar = progress(total=n, desc=f"demos {base.task.name}/{backend}") if progress else None

    def episodes():
        for i in range(n):
            meta = make_metadata(
                task=base.task.name, backend=backend, obs_mode=obs, seed=seed + i,
                control_hz=base.control_hz, action_low=env.action_space.low, action_high=env.action_space.high,
                source="scripted_expert", expert_noise=noise, image_size=image_size, reward=reward,
                **({"expert_detour": detour} if detour > 0 else {}),
                **({"expert_jump": jump} if jump > 0 else {}),
                **({"expert_fumble": fumble} if fumble > 0 else {}),
            )
            recorder = EpisodeRecorder(meta) if out is not None else None
            perturb = None
            jrng = np.random.default_rng([seed + i, 3])
            if jump > 0 and jrng.random() < jump:
                from ..envs.perturb import ObjectJump

                # anywhere from "about to grasp" to "starting down from above it": varied recoveries
                perturb = ObjectJump(base.task.movable()[0], above=(-1.0, float(jrng.uniform(0.03, 0.10))))
            success, steps = expert_episode(env, seed + i, noise, recorder, detour=detour, perturb=perturb,
                                            fumble=fumble)
            report.attempts += 1
            report.successes += int(success)
            report.lengths.append(steps)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{report.success_rate:.0%}")
            if recorder is not None and (success or keep_failures):
                yield recorder.finish()

    try:
        if out is None:
            for _ in episodes():
                pass
        else:
            report.written = write_episodes_dir(out, episodes())
    finally:
        env.close()
        if bar is not None:
            bar.close()
    report.wall_s = time.perf_counter() - start
    return report


def replay_frames(episode: Episode, size: int = 256, divergence: list | None = None):
    """Re-simulate an episode from its metadata (task, backend, seed) and actions, and yield
    the front camera at ``size`` px with the step's instruction as a caption.

    This makes videos of state-only recordings. Simulation is deterministic, so the replay
    retraces the recording; the largest TCP deviation from the recorded ``tcp_pose`` is appended
    to ``divergence`` (if given) so callers can tell when a replay no longer matches.
    """
    from ..utils.video import tile_frames

    md = episode.metadata
    for key in ("task", "backend", "seed"):
        if md.get(key) is None:
            raise ValueError(f"episode metadata has no {key!r}: cannot replay it (metadata: {sorted(md)})")
    env = make_env(md["task"], backend=md["backend"], obs="state", render_mode="rgb_array", render_size=size)
    try:
        obs, _ = env.reset(seed=int(md["seed"]))
        recorded = episode.observations.get("tcp_pose")
        worst = 0.0
        yield tile_frames({"front": env.render()}, f"step 0/{episode.length}: {episode.instructions[0] if episode.length else ''}")
        for t, action in enumerate(episode.actions):
            obs, *_ = env.step(action)
            if recorded is not None:
                worst = max(worst, float(np.abs(obs["tcp_pose"][:3] - recorded[t + 1][:3]).max()))
            caption = f"step {t + 1}/{episode.length}: {episode.instructions[t]}"
            if episode.success[t]:
                caption += " [success]"
            yield tile_frames({"front": env.render()}, caption)
        if divergence is not None:
            divergence.append(worst)
    finally:
        env.close()


__all__ = ["DemoReport", "Episode", "expert_episode", "record_demonstrations", "replay_frames"]
