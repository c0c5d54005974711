"""Reach: bring the TCP to a target point in the air (the simplest task, used for quick tests)."""

from __future__ import annotations

import numpy as np

from ..scene import Scene, Shape
from .base import IDENTITY_QUAT, Segment, Task, TaskState, WaypointExpert, box_space, dist, never, squash


class Reach(Task):
    name = "reach"
    max_episode_steps = 50
    tolerance = 0.02  # m

    def scene(self) -> Scene:
        return Scene((Shape("target", "sphere", (0.015,), (0.1, 0.8, 0.2, 0.6), collide=False),))

    def sample(self, rng):
        target = rng.uniform([0.35, -0.2, 0.05], [0.65, 0.2, 0.35])
        self.params = {"target": target}
        return {"target": (target, IDENTITY_QUAT)}

    def observation_spaces(self):
        return {"target_pos": box_space(3)}

    def observe(self, backend):
        return {"target_pos": self.params["target"].astype(np.float32)}

    def evaluate(self, state: TaskState):
        d = dist(state.params["target"], state.tcp_pos)
        return d < self.tolerance, squash(d)

    def expert(self) -> WaypointExpert:
        return WaypointExpert(
            [Segment("reach the target", lambda s: s.params["target"], -1.0, never, fine=True)], pos_step=0.03
        )
