"""Evaluate any :class:`~serl_ctrl.runtime.policy.Policy` in simulation, with timing.

Episode ``i`` is reset with seed ``seed + i``, so two evaluations with the same seed see the same
episodes. ``act_ms`` is the full ``policy.act`` call as a controller sees it (observation checks,
queue, inference); ``infer_ms`` is one inference (one chunk for chunked policies).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .policy import Policy


def make_eval_env(policy: Policy, task: str | None = None, env_id: str | None = None, backend: str = "mujoco",
                  render: bool = False):
    """The environment a policy was trained for: a serl_ctrl task (default: the spec's) or a gymnasium id."""
    import gymnasium as gym

    kwargs = {"render_mode": "rgb_array"} if render else {}
    if env_id is not None:
        import serl_ctrl.envs  # noqa: F401  (registers our ids too)

        return gym.make(env_id, **kwargs)
    task = task or policy.spec.task
    if task is None:
        raise ValueError("the policy names no task: pass --task or --env")
    from ..envs import make_env

    return make_env(task, backend=backend, obs=policy.spec.obs_mode or "state", **kwargs)


def evaluate(policy: Policy, env, episodes: int, seed: int = 0, on_frame: Callable | None = None,
             progress: Callable | None = None) -> dict:
    """Run ``episodes`` episodes; ``on_frame(frame)`` receives rendered frames of the first one."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    successes, returns, act_ms, infer_ms = 0, [], [], []
    bar = progress(total=episodes, desc="eval") if progress else None
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        policy.reset()
        total, success = 0.0, False
        if on_frame is not None and i == 0:
            on_frame(env.render())
        while True:
            n_before = policy.inferences
            start = time.perf_counter()
            action = policy.act(obs)
            act_ms.append((time.perf_counter() - start) * 1e3)
            if policy.inferences > n_before:
                infer_ms.append(policy.last_infer_ms)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            success = success or bool(info.get("success", info.get("is_success", False)))
            if on_frame is not None and i == 0:
                on_frame(env.render())
            if terminated or truncated:
                break
        successes += int(success)
        returns.append(total)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(success=f"{successes / (i + 1):.0%}")
    if bar is not None:
        bar.close()
    return {
        "success_rate": successes / episodes,
        "episodes": episodes,
        "seed": seed,
        "mean_return": float(np.mean(returns)),
        "act_ms_p50": float(np.percentile(act_ms, 50)),
        "act_ms_p99": float(np.percentile(act_ms, 99)),
        "infer_ms_p50": float(np.percentile(infer_ms, 50)),
    }
