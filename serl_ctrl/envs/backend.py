"""The interface every physics backend implements, and the pieces they share.

A backend owns one simulated Panda plus the objects of a :class:`~serl_ctrl.envs.scene.Scene`.
It knows physics and rendering, nothing about tasks, rewards or policies: the environment
(:mod:`serl_ctrl.envs.panda_env`) moves the controller's reference and asks for state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .controller import ImpedanceGains
from .scene import Camera, Scene

PHYSICS_DT = 0.002  # s: 500 Hz physics and impedance control in both backends

BACKENDS = ("mujoco", "pybullet")


class Backend(ABC):
    """One simulated Panda with a scene. All poses are world frame; quaternions are (w, x, y, z)."""

    physics_dt: float = PHYSICS_DT

    def __init__(self, scene: Scene, gains: ImpedanceGains, image_size: int = 128) -> None:
        self.scene = scene
        self.gains = gains
        self.image_size = image_size

    @abstractmethod
    def reset(self, q_arm: np.ndarray, finger_width: float, poses: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Put the arm at ``q_arm`` at rest, fingers at ``finger_width``, objects at ``poses``."""

    @abstractmethod
    def set_reference(self, coords: np.ndarray, finger_width: float) -> None:
        """Move the impedance controller's 6-D reference (see controller.cartesian_coords)."""

    @abstractmethod
    def step(self, n: int) -> None:
        """Advance the physics by ``n`` steps of ``physics_dt`` with the controller running."""

    @abstractmethod
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and orientation quaternion (4,)."""

    @abstractmethod
    def tcp_velocity(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP linear velocity (3,) and angular velocity (3,), world frame."""

    @abstractmethod
    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions and velocities of the 9 joints (7 arm + 2 fingers), in JOINT_NAMES order."""

    @abstractmethod
    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Position and orientation of a scene shape."""

    @abstractmethod
    def object_velocity(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Linear and angular velocity of a scene shape."""

    @abstractmethod
    def set_object_pose(self, name: str, pos: np.ndarray, quat: np.ndarray) -> None:
        """Teleport a shape (markers and static fixtures are moved this way at reset)."""

    @abstractmethod
    def render(self, camera: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """RGB uint8 image (H, W, 3) from a scene camera."""

    def close(self) -> None:
        """Free native resources (renderer contexts, physics clients)."""

    def finger_width(self) -> float:
        q, _ = self.joint_state()
        return float(q[7] + q[8])

    def camera(self, name: str) -> Camera:
        for cam in self.scene.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"unknown camera {name!r}; cameras: {[c.name for c in self.scene.cameras]}")


def look_at_axes(pos: np.ndarray, lookat: np.ndarray, up_hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image x (right) and y (up) axes of a camera at ``pos`` looking at ``lookat``."""
    forward = np.asarray(lookat, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up_hint)
    if np.linalg.norm(right) < 1e-6:  # looking along the hint: any perpendicular will do
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return right, up


# Hand cameras look along the hand's +z axis (the direction the fingers point), with the image's
# "up" towards the hand's +x axis, as a camera mounted on the Panda's hand does.
HAND_CAMERA_LOOKAT = np.array([0.0, 0.0, 0.16])
HAND_CAMERA_UP = np.array([1.0, 0.0, 0.0])


def make_backend(name: str, scene: Scene, gains: ImpedanceGains, image_size: int = 128) -> Backend:
    """Build a backend by name; unknown names get an error listing the valid ones."""
    if name == "mujoco":
        from .mujoco_backend import MujocoBackend

        return MujocoBackend(scene, gains, image_size)
    if name == "pybullet":
        from .pybullet_backend import PybulletBackend

        return PybulletBackend(scene, gains, image_size)
    raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
