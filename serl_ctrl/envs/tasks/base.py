"""What a task is: a scene, a randomised reset, observations of its objects, reward and success,
and a scripted expert.

A task never touches a physics engine directly: it talks to a
:class:`~serl_ctrl.envs.backend.Backend`, so every task runs on MuJoCo and PyBullet alike.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gymnasium import spaces

from ..backend import Backend
from ..panda import HOME_Q, MAX_FINGER_WIDTH
from ..scene import Scene

Poses = dict[str, tuple[np.ndarray, np.ndarray]]
IDENTITY_QUAT = np.array([1.0, 0.0, 0.0, 0.0])


@dataclass
class TaskState:
    """Privileged state the reward, success test and scripted expert read (never the policy)."""

    tcp_pos: np.ndarray
    finger_width: float
    objects: dict[str, np.ndarray]  # name -> position (3,)
    params: dict[str, np.ndarray]  # episode parameters, e.g. the target position
    quats: dict[str, np.ndarray] = field(default_factory=dict)  # name -> orientation (w, x, y, z)


class Task(ABC):
    """One task of the Panda environments. Subclasses set ``name`` and ``max_episode_steps``."""

    name: str = ""
    max_episode_steps: int = 100

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}

    @abstractmethod
    def scene(self) -> Scene:
        """The shapes this task puts on the table."""

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Poses:
        """Draw an episode: set ``self.params`` and return the initial object poses."""

    def reset(self, backend: Backend, rng: np.random.Generator) -> None:
        """Randomise the episode from ``rng`` and put the robot and objects in place."""
        poses = self.sample(rng)
        backend.reset(HOME_Q, MAX_FINGER_WIDTH, poses)

    @abstractmethod
    def observation_spaces(self) -> dict[str, spaces.Box]:
        """Spaces of the object observations (positions, orientations, targets)."""

    @abstractmethod
    def observe(self, backend: Backend) -> dict[str, np.ndarray]:
        """Object observations, matching :meth:`observation_spaces`."""

    @abstractmethod
    def evaluate(self, state: TaskState) -> tuple[bool, float]:
        """(success, dense reward in [0, 1]) for the current state."""

    @abstractmethod
    def expert(self) -> "WaypointExpert":
        """A scripted expert that solves this task from privileged state."""

    def movable(self) -> tuple[str, ...]:
        """Names of the movable objects (cached: ``scene()`` builds a new description each call)."""
        if not hasattr(self, "_movable"):
            self._movable = tuple(s.name for s in self.scene().shapes if s.movable)
        return self._movable

    def state(self, backend: Backend) -> TaskState:
        pos, _ = backend.tcp_pose()
        poses = {name: backend.object_pose(name) for name in self.movable()}
        return TaskState(pos, backend.finger_width(), {k: p for k, (p, _) in poses.items()}, dict(self.params),
                         {k: q for k, (_, q) in poses.items()})


def dist(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two small vectors (np.linalg.norm's dispatch costs more than the math
    here, and rewards are computed at every control step)."""
    d = a - b
    return math.sqrt(float(d @ d))


def squash(x: float, scale: float = 10.0) -> float:
    """1 - tanh(scale * x): 1 at zero distance, towards 0 far away (the shaped reward terms)."""
    return 1.0 - math.tanh(scale * x)


def box_space(dim: int, low: float = -np.inf, high: float = np.inf) -> spaces.Box:
    return spaces.Box(low, high, shape=(dim,), dtype=np.float32)


def pose_obs(backend: Backend, name: str, prefix: str) -> dict[str, np.ndarray]:
    pos, quat = backend.object_pose(name)
    if quat[0] < 0:  # one sign for the double cover, so the policy sees a continuous signal
        quat = -quat
    return {f"{prefix}_pos": pos.astype(np.float32), f"{prefix}_quat": quat.astype(np.float32)}


# --- scripted experts ------------------------------------------------------------------------------

# Language labels for small corrective moves (the robot base frame: x forward, y left, z up).
FINE_LABELS = {
    (0, +1): "move a bit forward",
    (0, -1): "move a bit back",
    (1, +1): "move a bit to the left",
    (1, -1): "move a bit to the right",
    (2, +1): "a little higher",
    (2, -1): "a little lower",
}


def fine_label(delta: np.ndarray) -> str:
    """The instruction a person would give for a small move by ``delta`` (largest axis wins)."""
    axis = int(np.argmax(np.abs(delta)))
    return FINE_LABELS[(axis, 1 if delta[axis] > 0 else -1)]


@dataclass
class Segment:
    """One labelled step of a script: drive the TCP to ``target(state)`` with ``gripper`` until
    ``done(state, steps_in_segment)``. With ``fine`` set, the last few centimetres of the move are
    labelled as small corrections ("move a bit to the left") instead of the segment's label."""

    instruction: str
    target: Callable[[TaskState], np.ndarray]
    gripper: float
    done: Callable[[TaskState, int], bool]
    fine: bool = False


class WaypointExpert:
    """Follows a task's script of segments with a proportional controller on the TCP.

    The expert reads privileged state (object positions), outputs actions in the environment's
    action space, and returns the language instruction of the segment it is in, so recorded
    demonstrations are labelled per segment for language-conditioned policies.
    ``noise`` adds Gaussian action noise (in action units) to diversify demonstrations.
    """

    fine_radius = 0.03  # m: below this remaining distance a move is a "small correction"

    def __init__(self, segments: list[Segment], pos_step: float, noise: float = 0.0,
                 restart: Callable[[TaskState], bool] | None = None) -> None:
        self.segments = segments
        self.pos_step = pos_step
        self.noise = noise
        self.restart = restart
        self.index = 0
        self.steps = 0

    def reset(self) -> None:
        self.index = 0
        self.steps = 0

    def act(self, state: TaskState, rng: np.random.Generator | None = None) -> tuple[np.ndarray, str]:
        if self.restart is not None and self.index > 0 and self.restart(state):
            self.index, self.steps = 0, 0
        while self.index < len(self.segments) - 1 and self.segments[self.index].done(state, self.steps):
            self.index += 1
            self.steps = 0
        seg = self.segments[self.index]
        delta = seg.target(state) - state.tcp_pos
        action = np.zeros(4, dtype=np.float32)
        action[:3] = np.clip(delta / self.pos_step, -1.0, 1.0)
        action[3] = seg.gripper
        if self.noise > 0 and rng is not None:
            action[:3] = np.clip(action[:3] + rng.normal(0.0, self.noise, 3), -1.0, 1.0)
        instruction = seg.instruction
        if seg.fine and np.linalg.norm(delta) < self.fine_radius and np.linalg.norm(delta) > 0.004:
            instruction = fine_label(delta)
        self.steps += 1
        return action, instruction


def with_detour(expert: WaypointExpert, offset: np.ndarray) -> WaypointExpert:
    """The same script, but starting with a move to the first segment's target shifted by ``offset``
    (labelled like the first segment). From there the first segment's small corrections ("move a bit
    to the left" ...) bring the TCP back, so demonstrations recorded this way hold examples of every
    small correction a person may speak, not only the ones the straight approach happens to need."""
    first = expert.segments[0]
    shift = np.asarray(offset, dtype=float)
    target = lambda s: first.target(s) + shift  # noqa: E731
    detour = Segment(first.instruction, target, first.gripper, reached(target, 0.006, 0.02))
    return WaypointExpert([detour, *expert.segments], expert.pos_step, expert.noise, expert.restart)


def reached(target: Callable[[TaskState], np.ndarray], tol_xy: float, tol_z: float) -> Callable[[TaskState, int], bool]:
    """A ``done`` test: the TCP is within tolerance of the segment's target."""

    def done(state: TaskState, steps: int) -> bool:
        d = target(state) - state.tcp_pos
        return bool(np.linalg.norm(d[:2]) < tol_xy and abs(d[2]) < tol_z)

    return done


def after(n: int) -> Callable[[TaskState, int], bool]:
    """A ``done`` test: the segment has run ``n`` steps."""
    return lambda state, steps: steps >= n


def never(state: TaskState, steps: int) -> bool:
    return False
