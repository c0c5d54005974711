"""Insert: put a peg held in the gripper into a hole with 1.5 mm clearance per side (SERL's peg
insertion in miniature). The episode starts with the peg grasped."""

from __future__ import annotations

import numpy as np

from ..controller import quat_to_mat
from ..panda import HOME_Q
from ..scene import Scene, Shape
from .base import (IDENTITY_QUAT, Segment, Task, TaskState, WaypointExpert, box_space, dist, never, pose_obs, reached,
                   squash)

PEG = (0.012, 0.012, 0.04)  # half extents
CLEARANCE = 0.0015  # per side
OPENING = PEG[0] + CLEARANCE  # half width of the hole
WALL = 0.02  # half thickness of the fixture walls
DEPTH = 0.02  # half height of the fixture (the hole is 4 cm deep)
GRIP_OFFSET = 0.025  # m: peg centre below the TCP while held
FIXTURE_RGBA = (0.55, 0.55, 0.6, 1.0)


def _walls(center: np.ndarray) -> dict[str, np.ndarray]:
    x, y = center[:2]
    o = OPENING + WALL
    return {
        "wall_n": np.array([x, y + o, DEPTH]),
        "wall_s": np.array([x, y - o, DEPTH]),
        "wall_e": np.array([x + o, y, DEPTH]),
        "wall_w": np.array([x - o, y, DEPTH]),
    }


class Insert(Task):
    name = "insert"
    max_episode_steps = 100
    insertion = 0.02  # m below the hole's rim for success

    def scene(self) -> Scene:
        long_half = (OPENING + 2 * WALL, WALL, DEPTH)
        short_half = (WALL, OPENING, DEPTH)
        return Scene((
            Shape("peg", "box", PEG, (0.95, 0.55, 0.1, 1.0), mass=0.05, pos=(0.5, 0.0, 0.3)),
            Shape("wall_n", "box", long_half, FIXTURE_RGBA, pos=(0.5, 0.1, DEPTH)),
            Shape("wall_s", "box", long_half, FIXTURE_RGBA, pos=(0.5, -0.1, DEPTH)),
            Shape("wall_e", "box", short_half, FIXTURE_RGBA, pos=(0.6, 0.0, DEPTH)),
            Shape("wall_w", "box", short_half, FIXTURE_RGBA, pos=(0.4, 0.0, DEPTH)),
        ))

    def sample(self, rng):
        hole = np.array([*rng.uniform([0.45, -0.12], [0.6, 0.12]), 2 * DEPTH])
        self.params = {"hole": hole}
        poses = {name: (pos, IDENTITY_QUAT) for name, pos in _walls(hole).items()}
        return poses

    def reset(self, backend, rng) -> None:
        poses = self.sample(rng)
        # Start with the peg between the open fingers, then let the gripper close on it.
        backend.reset(HOME_Q, 2 * PEG[0] + 0.004, poses)
        tcp, _ = backend.tcp_pose()
        backend.set_object_pose("peg", tcp - np.array([0.0, 0.0, GRIP_OFFSET]), IDENTITY_QUAT)
        from ..controller import cartesian_coords

        backend.set_reference(cartesian_coords(*backend.tcp_pose()), 0.0)
        backend.step(150)

    def observation_spaces(self):
        return {"peg_pos": box_space(3), "peg_quat": box_space(4, -1.0, 1.0), "hole_pos": box_space(3)}

    def observe(self, backend):
        return {**pose_obs(backend, "peg", "peg"), "hole_pos": self.params["hole"].astype(np.float32)}

    def evaluate(self, state: TaskState):
        peg, hole = state.objects["peg"], state.params["hole"]
        bottom = peg[2] - PEG[2]
        lateral = dist(peg[:2], hole[:2])
        depth = float(hole[2] - bottom)
        success = depth > self.insertion and lateral < OPENING
        dense = 0.5 * squash(lateral, 20.0) + 0.5 * min(max(depth / self.insertion, 0.0), 1.0)
        return bool(success), float(dense)

    def expert(self) -> WaypointExpert:
        def peg_tip(s: TaskState) -> np.ndarray:
            """Centre of the peg's bottom face: what must enter the hole (the peg may tilt in the grasp)."""
            return s.objects["peg"] + quat_to_mat(s.quats["peg"]) @ np.array([0.0, 0.0, -PEG[2]])

        def aligned(s: TaskState) -> np.ndarray:
            # Steer by the peg's tip, not the TCP: the peg may sit off-centre or tilted in the grasp.
            return s.tcp_pos[:2] + (s.params["hole"][:2] - peg_tip(s)[:2])

        above_z = 2 * DEPTH + 0.015 + PEG[2] + GRIP_OFFSET
        bottom_z = 0.004 + PEG[2] + GRIP_OFFSET

        def above(s: TaskState) -> np.ndarray:
            return np.array([*aligned(s), above_z])

        def down(s: TaskState) -> np.ndarray:
            # Descend 1 cm per step, and only while the peg is centred over the hole to within
            # half the clearance; otherwise hover and re-centre (a peg that hits the rim tilts).
            lateral = np.linalg.norm(s.params["hole"][:2] - peg_tip(s)[:2])
            z = max(bottom_z, s.tcp_pos[2] - 0.01) if lateral < 0.5 * CLEARANCE + 0.0005 else s.tcp_pos[2]
            return np.array([*aligned(s), z])

        return WaypointExpert(
            [
                Segment("move above the hole", above, 1.0, reached(above, 0.0015, 0.01), fine=True),
                Segment("insert the peg", down, 1.0, never),
            ],
            pos_step=0.03,
        )
