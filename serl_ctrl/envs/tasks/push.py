"""Push: slide a block across the table onto a target with the closed gripper."""

from __future__ import annotations

import numpy as np

from ..scene import Scene, Shape
from .base import (IDENTITY_QUAT, Segment, Task, TaskState, WaypointExpert, box_space, dist, never, pose_obs,
                   reached, squash)

HALF = 0.025  # m: half the block's edge
PUSH_HEIGHT = 0.022  # m: TCP height while pushing (finger tips ~1.5 cm above the table)


def _direction(s: TaskState) -> np.ndarray:
    d = s.params["target"][:2] - s.objects["block"][:2]
    n = np.linalg.norm(d)
    return d / n if n > 1e-6 else np.array([1.0, 0.0])


def _behind(s: TaskState, height: float) -> np.ndarray:
    xy = s.objects["block"][:2] - _direction(s) * (HALF + 0.035)
    return np.array([*xy, height])


def _push_point(s: TaskState) -> np.ndarray:
    """Aim slightly into the block's back face: re-aimed every step, this steers the block."""
    block, target = s.objects["block"][:2], s.params["target"][:2]
    if np.linalg.norm(target - block) < 0.008:  # close enough: stop and let it settle
        return np.array([*s.tcp_pos[:2], PUSH_HEIGHT])
    xy = block - _direction(s) * (HALF + 0.005) + _direction(s) * 0.03
    return np.array([*xy, PUSH_HEIGHT])


def _off_line(s: TaskState) -> bool:
    """The TCP is no longer behind the block (the block turned or slid sideways)."""
    rel = s.objects["block"][:2] - s.tcp_pos[:2]
    dist = np.linalg.norm(rel)
    return bool(dist > 0.09 or (dist > 1e-6 and float(rel @ _direction(s)) / dist < np.cos(np.radians(35))))


class Push(Task):
    name = "push"
    max_episode_steps = 100
    tolerance = 0.025  # m, block centre to target in the table plane

    def scene(self) -> Scene:
        return Scene((
            Shape("block", "box", (HALF, HALF, HALF), (0.15, 0.35, 0.85, 1.0), mass=0.2, pos=(0.5, 0.0, HALF)),
            Shape("target", "cylinder", (0.03, 0.0005), (0.1, 0.8, 0.2, 0.7), collide=False),
        ))

    def sample(self, rng):
        block = np.array([*rng.uniform([0.42, -0.12], [0.58, 0.12]), HALF])
        while True:
            angle = rng.uniform(-np.pi, np.pi)
            dist = rng.uniform(0.10, 0.16)
            target = block[:2] + dist * np.array([np.cos(angle), np.sin(angle)])
            if np.all(target >= [0.36, -0.2]) and np.all(target <= [0.66, 0.2]):
                break
        target = np.array([*target, 0.0005])
        self.params = {"target": target}
        return {"block": (block, IDENTITY_QUAT), "target": (target, IDENTITY_QUAT)}

    def observation_spaces(self):
        return {"block_pos": box_space(3), "block_quat": box_space(4, -1.0, 1.0), "target_pos": box_space(3)}

    def observe(self, backend):
        return {**pose_obs(backend, "block", "block"), "target_pos": self.params["target"].astype(np.float32)}

    def evaluate(self, state: TaskState):
        block = state.objects["block"]
        d = dist(block[:2], state.params["target"][:2])
        dense = 0.2 * squash(max(0.0, dist(block, state.tcp_pos) - 0.04)) + 0.8 * squash(d)
        return d < self.tolerance, dense

    def expert(self) -> WaypointExpert:
        high = lambda s: _behind(s, 0.08)  # noqa: E731
        low = lambda s: _behind(s, PUSH_HEIGHT)  # noqa: E731
        return WaypointExpert(
            [
                Segment("move behind the block", high, 1.0, reached(high, 0.008, 0.02), fine=True),
                Segment("go down", low, 1.0, reached(low, 0.01, 0.008)),
                Segment("push the block to the target", _push_point, 1.0, never),
            ],
            pos_step=0.03,
            restart=_off_line,
        )
