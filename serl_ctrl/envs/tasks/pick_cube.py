"""PickCube: grasp a 4 cm cube lying on the table and lift it (SERL's pick-cube task in miniature)."""

from __future__ import annotations

import numpy as np

from ..scene import Scene, Shape
from .base import (IDENTITY_QUAT, Segment, Task, TaskState, WaypointExpert, after, dist, never, pose_obs, reached,
                   squash)

HALF = 0.02  # m: half the cube's edge


class PickCube(Task):
    name = "pickcube"
    max_episode_steps = 100
    lift = 0.06  # m the cube must rise above its resting height

    def scene(self) -> Scene:
        return Scene((Shape("cube", "box", (HALF, HALF, HALF), (0.85, 0.15, 0.1, 1.0), mass=0.1,
                            pos=(0.5, 0.0, HALF)),))

    def sample(self, rng):
        pos = np.array([*rng.uniform([0.4, -0.15], [0.6, 0.15]), HALF])
        self.params = {"cube_start": pos}
        return {"cube": (pos, IDENTITY_QUAT)}

    def observation_spaces(self):
        from .base import box_space

        return {"cube_pos": box_space(3), "cube_quat": box_space(4, -1.0, 1.0)}

    def observe(self, backend):
        return pose_obs(backend, "cube", "cube")

    def evaluate(self, state: TaskState):
        cube = state.objects["cube"]
        lifted = float(cube[2]) - HALF
        dense = 0.3 * squash(dist(cube, state.tcp_pos)) + 0.7 * min(max(lifted / self.lift, 0.0), 1.0)
        return bool(lifted > self.lift), float(dense)

    def expert(self) -> WaypointExpert:
        above = lambda s: s.objects["cube"] + np.array([0.0, 0.0, 0.08])  # noqa: E731
        grasp = lambda s: s.objects["cube"] + np.array([0.0, 0.0, 0.002])  # noqa: E731
        up = lambda s: np.array([*s.objects["cube"][:2], 0.2])  # noqa: E731
        return WaypointExpert(
            [
                Segment("move above the cube", above, -1.0, reached(above, 0.006, 0.02), fine=True),
                Segment("go down", grasp, -1.0, reached(grasp, 0.008, 0.006)),
                Segment("close the gripper", grasp, 1.0, after(5)),
                Segment("lift", up, 1.0, never),
            ],
            pos_step=0.03,
            # The cube slipped out or was knocked away: start over from above it.
            restart=lambda s: s.objects["cube"][2] < HALF + 0.01
            and np.linalg.norm(s.objects["cube"][:2] - s.tcp_pos[:2]) > 0.03,
        )
