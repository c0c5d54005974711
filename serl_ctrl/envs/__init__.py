"""Simulated Panda environments: ``gymnasium.make("serl_ctrl/Panda<Task>-v0", backend=..., obs=...)``.

Importing this module registers ``serl_ctrl/PandaReach-v0``, ``PandaPickCube-v0``, ``PandaPush-v0``
and ``PandaInsert-v0``. :func:`make_env` is the same with validated task names.
"""

from __future__ import annotations

import gymnasium as gym

from .backend import BACKENDS
from .panda_env import OBS_MODES, PandaEnv
from .tasks import TASKS, make_task

ENV_IDS = {
    "reach": "serl_ctrl/PandaReach-v0",
    "pickcube": "serl_ctrl/PandaPickCube-v0",
    "push": "serl_ctrl/PandaPush-v0",
    "insert": "serl_ctrl/PandaInsert-v0",
    "avoid": "serl_ctrl/PandaAvoid-v0",
}

for _name, _env_id in ENV_IDS.items():
    if _env_id not in gym.registry:
        gym.register(
            id=_env_id,
            entry_point="serl_ctrl.envs.panda_env:PandaEnv",
            kwargs={"task": _name},
            max_episode_steps=TASKS[_name].max_episode_steps,
        )


def make_env(task: str, backend: str = "mujoco", obs: str = "state", **kwargs) -> gym.Env:
    """``gym.make`` for a task by name, with the registered time limit; bad names list the valid ones."""
    name = make_task(task).name
    return gym.make(ENV_IDS[name], backend=backend, obs=obs, **kwargs)


__all__ = ["BACKENDS", "ENV_IDS", "OBS_MODES", "PandaEnv", "TASKS", "make_env"]
