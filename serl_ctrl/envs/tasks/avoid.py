"""Avoid: reach a goal behind a pillar, passing it on the left or on the right.

The multimodal task of the imitation benchmarks. The TCP starts at the home pose; a pillar stands
between it and the goal, so every good path bends around it. The scripted expert picks the side
by a coin flip drawn from the episode seed (``params["side"]``: +1 left, -1 right; the policy
never sees it), so the demonstrations hold two modes for the same observation. A generative policy
(diffusion, consistency) reproduces both; a unimodal Gaussian policy averages them into a straight
line through the pillar.

The pillar is a visual marker (it does not collide, so the physics stays simple and identical in
both backends); touching it is decided geometrically: the TCP within ``radius + margin`` of the
pillar's axis (in the table plane) below its top counts as a collision, which is latched for the
episode and makes it a failure. ``episode_summary()`` reports ``collided`` and ``side`` (which way
the TCP passed the pillar: +1 left, -1 right, 0 not yet) for evaluation.
"""

from __future__ import annotations

import numpy as np

from ..scene import Scene, Shape
from .base import IDENTITY_QUAT, Segment, Task, TaskState, WaypointExpert, box_space, never, reached

RADIUS = 0.035  # m: pillar radius
HEIGHT = 0.40  # m: pillar height (above the workspace's useful heights: no way over it)
MARGIN = 0.02  # m: the fingers' half width beside the TCP
CLEARANCE = 0.085  # m: how far beside the pillar's surface the expert passes


class Avoid(Task):
    name = "avoid"
    max_episode_steps = 40
    tolerance = 0.03  # m, TCP to goal

    def __init__(self) -> None:
        super().__init__()
        self.collided = False
        self.side = 0

    def scene(self) -> Scene:
        return Scene((
            Shape("pillar", "cylinder", (RADIUS, HEIGHT / 2), (0.8, 0.2, 0.2, 0.8), collide=False),
            Shape("goal", "sphere", (0.015,), (0.1, 0.8, 0.2, 0.6), collide=False),
        ))

    def sample(self, rng):
        pillar = np.array([*rng.uniform([0.62, -0.02], [0.63, 0.02]), HEIGHT / 2])
        goal = rng.uniform([0.72, -0.03, 0.20], [0.74, 0.03, 0.30])
        side = 1.0 if rng.random() < 0.5 else -1.0  # the expert's coin flip
        self.params = {"pillar": pillar, "goal": goal, "side": np.array([side])}
        self.collided = False
        self.side = 0
        return {"pillar": (pillar, IDENTITY_QUAT), "goal": (goal, IDENTITY_QUAT)}

    def observation_spaces(self):
        return {"pillar_pos": box_space(3), "goal_pos": box_space(3)}

    def observe(self, backend):
        return {"pillar_pos": self.params["pillar"].astype(np.float32),
                "goal_pos": self.params["goal"].astype(np.float32)}

    def hits(self, tcp: np.ndarray) -> bool:
        """Whether a TCP position touches the pillar (module docstring)."""
        pillar = self.params["pillar"]
        return bool(np.linalg.norm(tcp[:2] - pillar[:2]) < RADIUS + MARGIN and tcp[2] < HEIGHT + MARGIN)

    def evaluate(self, state: TaskState):
        tcp = state.tcp_pos
        if self.hits(tcp):
            self.collided = True
        pillar = state.params["pillar"]
        if self.side == 0 and tcp[0] >= pillar[0]:
            self.side = 1 if tcp[1] > pillar[1] else -1
        dist = float(np.linalg.norm(state.params["goal"] - tcp))
        success = dist < self.tolerance and not self.collided
        dense = 0.0 if self.collided else float(1.0 - np.tanh(10.0 * dist))
        return success, dense

    def episode_summary(self) -> dict:
        return {"collided": bool(self.collided), "side": int(self.side)}

    def expert(self) -> WaypointExpert:
        def via(s: TaskState) -> np.ndarray:
            p, g = s.params["pillar"], s.params["goal"]
            return np.array([p[0] + 0.01, p[1] + s.params["side"][0] * (RADIUS + CLEARANCE), g[2]])

        def goal(s: TaskState) -> np.ndarray:
            return s.params["goal"]

        return WaypointExpert(
            [
                Segment("go around the obstacle", via, -1.0, reached(via, 0.03, 0.05)),
                Segment("reach the goal", goal, -1.0, never, fine=True),
            ],
            pos_step=0.03,
        )


__all__ = ["Avoid"]
