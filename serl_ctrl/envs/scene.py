"""A backend-neutral description of what stands on the table.

Tasks describe their objects once, as boxes, spheres and cylinders; the MuJoCo and PyBullet
backends each build the same scene from this description. Keeping the scene as data (not as MJCF
or URDF text per task) is what lets one task run on both simulators without copy-paste.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Where the robot may put its TCP (world frame, metres). The robot base stands at the origin on
# the table top (z = 0). Every reference the policy produces is clipped into this box.
WORKSPACE_LOW = np.array([0.25, -0.30, 0.008])
WORKSPACE_HIGH = np.array([0.75, 0.30, 0.45])


@dataclass(frozen=True)
class Shape:
    """One rigid object. ``mass == 0`` makes it static (welded to the world).

    ``kind`` is "box" (``size`` = half extents x, y, z), "sphere" (``size[0]`` = radius) or
    "cylinder" (``size[0]`` = radius, ``size[1]`` = half height). A shape with ``collide=False``
    is a visual marker only (targets): it is rendered but never touched.
    """

    name: str
    kind: str
    size: tuple[float, ...]
    rgba: tuple[float, float, float, float]
    mass: float = 0.0
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    collide: bool = True
    friction: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("box", "sphere", "cylinder"):
            raise ValueError(f"Shape {self.name!r}: kind must be box, sphere or cylinder, got {self.kind!r}")
        if self.mass > 0 and not self.collide:
            raise ValueError(f"Shape {self.name!r}: a movable object must collide")

    @property
    def movable(self) -> bool:
        return self.mass > 0

    @property
    def half_extents(self) -> np.ndarray:
        if self.kind == "box":
            return np.asarray(self.size[:3], dtype=float)
        if self.kind == "sphere":
            return np.full(3, self.size[0])
        return np.array([self.size[0], self.size[0], self.size[1]])


@dataclass(frozen=True)
class Camera:
    """A camera: fixed in the world (``attach="world"``) or riding on the hand (``"hand"``).

    Fixed cameras look from ``pos`` at ``lookat``. Hand cameras sit at ``pos`` in the hand frame
    and look along the gripper (the hand's +z axis), as a wrist camera does on the real Panda.
    """

    name: str
    attach: str
    pos: tuple[float, float, float]
    lookat: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fovy: float = 45.0


FRONT_CAMERA = Camera("front", "world", pos=(1.0, 0.0, 0.45), lookat=(0.5, 0.0, 0.06), fovy=50.0)
WRIST_CAMERA = Camera("wrist", "hand", pos=(0.07, 0.0, 0.03), fovy=75.0)
CAMERAS = (FRONT_CAMERA, WRIST_CAMERA)


@dataclass(frozen=True)
class Scene:
    """Everything a backend needs to build: the objects and cameras (the Panda is implicit)."""

    shapes: tuple[Shape, ...] = ()
    cameras: tuple[Camera, ...] = CAMERAS
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.name for s in self.shapes]
        if len(set(names)) != len(names):
            raise ValueError(f"Scene: shape names must be unique, got {names}")

    def shape(self, name: str) -> Shape:
        for s in self.shapes:
            if s.name == name:
                return s
        raise KeyError(f"no shape named {name!r} in the scene; shapes: {[s.name for s in self.shapes]}")
