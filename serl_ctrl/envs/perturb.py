"""Perturbations that move objects during an episode (to test recovery, and to record it).

A perturbation is a callable ``perturb(env, step, rng) -> bool`` called before every env step (as
``serl_ctrl.agents.imitation.rollout_success`` and ``serl_ctrl.data.demos.expert_episode`` do); it
returns True on the step it moved something. The scripted experts restart their script when the
object they were reaching for is gone, so demonstrations recorded with a perturbation hold labelled
recoveries ("move above the cube" from beside it), which a language-conditioned policy can learn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ObjectJump"]


class ObjectJump:
    """Move object ``name`` ``lo``-``hi`` metres sideways once, when the open gripper comes down on it:
    the TCP within 2 cm of it horizontally and ``above[0]``-``above[1]`` metres above it (default
    0-5 cm: about to grasp), fingers open. The new position stays inside ``bounds`` (x, y low /
    high, the task's spawn area)."""

    def __init__(self, name: str = "cube", lo: float = 0.05, hi: float = 0.07,
                 bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.4, -0.15), (0.6, 0.15)),
                 above: tuple[float, float] = (-1.0, 0.05)) -> None:
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < lo <= hi, got {lo}, {hi}")
        if not above[0] < above[1]:
            raise ValueError(f"above must be (low, high) with low < high, got {above}")
        self.above = (float(above[0]), float(above[1]))
        self.name, self.lo, self.hi = name, float(lo), float(hi)
        self.low, self.high = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
        self.jumped = False

    def reset(self) -> None:
        self.jumped = False

    def __call__(self, env, step: int, rng: np.random.Generator) -> bool:
        base = env.unwrapped
        if step == 0:
            self.jumped = False
        if self.jumped:
            return False
        s = base.task_state()
        obj = s.objects[self.name]
        height = s.tcp_pos[2] - obj[2]
        near = np.linalg.norm(s.tcp_pos[:2] - obj[:2]) < 0.02 and self.above[0] <= height < self.above[1]
        if not near or s.finger_width < 0.06:
            return False
        new = obj[:2]
        for _ in range(20):
            ang, dist = rng.uniform(-np.pi, np.pi), rng.uniform(self.lo, self.hi)
            new = obj[:2] + dist * np.array([np.cos(ang), np.sin(ang)])
            if np.all(new >= self.low) and np.all(new <= self.high):
                break
        _, quat = base.sim.object_pose(self.name)
        base.sim.set_object_pose(self.name, np.array([*new, obj[2]]), quat)
        self.jumped = True
        return True
