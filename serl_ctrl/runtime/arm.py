"""A simulated Panda that takes the commands a ros2_control arm takes: the library side of sim_bridge.

:class:`SimArm` wraps a :class:`~serl_ctrl.envs.panda_env.PandaEnv` (its backend, task and
randomised resets) and drives it with the *same* reference-limited Cartesian impedance controller
the gym environments use. It accepts:

* Cartesian targets (position + orientation, or + yaw) and a gripper opening: they become the
  controller's reference directly;
* Cartesian twists: the reference moves at that velocity (integrated every physics step) until
  the twist is replaced, times out or the arm holds;
* joint positions (7 arm joints, optionally + 2 finger joints) and joint trajectories.

**Joint commands, and why through forward kinematics.** Both backends run a Cartesian
controller (MuJoCo compiles it into actuators); there is no joint-space position loop to hand a
joint command to, and adding one would mean a second controller with its own gains that the
policies were never trained with. So a joint-position command is converted to the Cartesian
reference of the pose those joints would put the TCP in (forward kinematics of the commanded
joints, :class:`PandaKinematics`, read from the same URDF the simulators load), and the impedance
controller tracks it. The TCP goes exactly where the joints would put it; the one redundant
degree of freedom (the elbow's swivel) is left to the controller's weak posture spring, so the
measured joints may differ from the commanded ones by a null-space motion. Every joint command
therefore passes the same reference limiting and workspace box as any other command. A joint
trajectory is sampled at the physics time (linear interpolation between points, holding the last)
and each sample goes the same way.

"Hold" means: the reference is latched at the TCP's measured pose (twists and trajectories
stop), fingers keep their target. The ROS bridge holds when its command stream goes silent.

No ROS in here; time is the simulation's clock (``SimArm.time``, seconds since construction).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..envs.controller import DOWN_QUAT, cartesian_coords, quat_to_mat, yaw_to_quat
from ..envs.panda import ARM_JOINTS, FINGER_JOINTS, JOINT_NAMES, MAX_FINGER_WIDTH, TCP_LINK, panda_urdf_path
from ..envs.scene import WORKSPACE_HIGH, WORKSPACE_LOW

__all__ = ["JointTrajectory", "PandaKinematics", "SimArm", "mat_to_quat"]

_DOWN_ROT = quat_to_mat(DOWN_QUAT)


# --- kinematics -----------------------------------------------------------------------------------


def _rpy_to_mat(r: float, p: float, y: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def _axis_angle_to_mat(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis
    c, s = np.cos(angle), np.sin(angle)
    C = 1.0 - c
    return np.array(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ]
    )


def mat_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z) with w >= 0."""
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = np.array([(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s])
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = np.array([(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = np.array([(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


@dataclass(frozen=True)
class _Joint:
    name: str
    kind: str
    origin: np.ndarray  # 4x4 parent -> joint frame
    axis: np.ndarray


class PandaKinematics:
    """Forward kinematics of the Panda's arm (base at the world origin) to the TCP link.

    The chain is read from pybullet_data's panda.urdf, the file both simulators load, so the FK
    agrees with the simulated TCP to numerical precision (tested).
    """

    def __init__(self, tip: str = TCP_LINK) -> None:
        self.chain = _urdf_chain(str(panda_urdf_path()), tip)
        names = [j.name for j in self.chain if j.kind != "fixed"]
        if tuple(names) != ARM_JOINTS:
            raise ValueError(f"unexpected Panda chain {names}; expected {ARM_JOINTS}")

    def tcp_pose(self, q_arm) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and quaternion (w, x, y, z) for the 7 arm joint angles."""
        q = np.asarray(q_arm, dtype=np.float64).reshape(-1)
        if q.size != 7:
            raise ValueError(f"forward kinematics needs 7 arm joint angles, got {q.size}")
        t = np.eye(4)
        i = 0
        for joint in self.chain:
            t = t @ joint.origin
            if joint.kind in ("revolute", "continuous"):
                rot = np.eye(4)
                rot[:3, :3] = _axis_angle_to_mat(joint.axis, q[i])
                t = t @ rot
                i += 1
        return t[:3, 3].copy(), mat_to_quat(t[:3, :3])


@lru_cache(maxsize=4)
def _urdf_chain(path: str, tip: str) -> tuple[_Joint, ...]:
    root = ET.parse(path).getroot()
    by_child = {}
    for j in root.findall("joint"):
        origin = j.find("origin")
        xyz = np.array([float(v) for v in (origin.get("xyz", "0 0 0") if origin is not None else "0 0 0").split()])
        rpy = np.array([float(v) for v in (origin.get("rpy", "0 0 0") if origin is not None else "0 0 0").split()])
        t = np.eye(4)
        t[:3, :3] = _rpy_to_mat(*rpy)
        t[:3, 3] = xyz
        axis_el = j.find("axis")
        axis = np.array([float(v) for v in axis_el.get("xyz").split()]) if axis_el is not None else np.zeros(3)
        if np.linalg.norm(axis) > 0:
            axis = axis / np.linalg.norm(axis)
        joint = _Joint(j.get("name"), j.get("type"), t, axis)
        by_child[j.find("child").get("link")] = (j.find("parent").get("link"), joint)
    chain = []
    link = tip
    while link in by_child:
        parent, joint = by_child[link]
        chain.append(joint)
        link = parent
    if not chain:
        raise ValueError(f"link {tip!r} not found in {path}")
    return tuple(reversed(chain))


# --- trajectories ---------------------------------------------------------------------------------


class JointTrajectory:
    """Joint positions at times (seconds after ``start``), sampled by linear interpolation.

    Before the first point the trajectory moves from ``q0`` (where the joints were when it
    arrived) to the first point; after the last point it holds the last point.
    """

    def __init__(self, start: float, times, positions, q0) -> None:
        self.start = float(start)
        self.times = np.asarray(times, dtype=np.float64).reshape(-1)
        self.positions = np.asarray(positions, dtype=np.float64)
        if self.positions.ndim != 2 or self.positions.shape[0] != self.times.size:
            raise ValueError("positions must be (N, n_joints) with one row per time")
        q0 = np.asarray(q0, dtype=np.float64).reshape(-1)[: self.positions.shape[1]]
        if self.times[0] > 0:
            self.times = np.concatenate([[0.0], self.times])
            self.positions = np.vstack([q0, self.positions])

    def sample(self, now: float) -> np.ndarray:
        t = now - self.start
        if t >= self.times[-1]:
            return self.positions[-1].copy()
        if t <= self.times[0]:
            return self.positions[0].copy()
        k = int(np.searchsorted(self.times, t, side="right"))
        t0, t1 = self.times[k - 1], self.times[k]
        w = (t - t0) / (t1 - t0)
        return (1.0 - w) * self.positions[k - 1] + w * self.positions[k]

    def finished(self, now: float) -> bool:
        return now - self.start >= self.times[-1]


# --- the arm ---------------------------------------------------------------------------------------


class SimArm:
    """A simulated Panda + task driven by arm commands (see the module docstring).

    Args:
        task: task name (``reach``, ``pickcube``, ``push``, ``insert``).
        backend: ``mujoco`` or ``pybullet``.
        image_size: camera image side (pixels).
        seed: seed of the first reset (later resets continue the same random stream).
    """

    def __init__(self, task: str = "pickcube", backend: str = "mujoco", image_size: int = 128, seed: int = 0,
                 gains=None) -> None:
        from ..envs.panda_env import PandaEnv

        self.env = PandaEnv(task=task, backend=backend, obs="state", image_size=image_size, gains=gains)
        self.sim = self.env.sim
        self.task = self.env.task
        self.kinematics = PandaKinematics()
        self.cameras = tuple(c.name for c in self.sim.scene.cameras)
        self.physics_dt = float(self.sim.physics_dt)
        self.time = 0.0
        self.steps = 0
        self.episode = 0
        self._reference = np.zeros(6)
        self._width = MAX_FINGER_WIDTH
        self._twist: np.ndarray | None = None
        self._twist_until = 0.0
        self._trajectory: JointTrajectory | None = None
        self.reset(seed=seed)

    # --- episodes -------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """New randomised episode of the task; the reference is put at the TCP (the arm rests)."""
        self.env.reset(seed=seed)
        self.episode += 1
        self._twist = None
        self._trajectory = None
        pos, quat = self.sim.tcp_pose()
        self._reference = cartesian_coords(pos, quat)
        self._width = self.sim.finger_width()
        # The task's reset may already have set a gripper target (Insert closes on the peg).
        self.sim.set_reference(self._reference, self._width)

    def close(self) -> None:
        self.env.close()

    # --- commands -------------------------------------------------------------------------------------

    def apply_cartesian_target(self, pos, quat=None, gripper_width: float | None = None, *, yaw: float | None = None):
        """Move the reference to ``pos`` (clipped into the workspace box) with orientation ``quat``
        (w, x, y, z), or gripper-down turned by ``yaw``, or the current reference orientation."""
        self._twist = None
        self._trajectory = None
        ref = self._reference.copy()
        ref[:3] = np.clip(np.asarray(pos, dtype=np.float64), WORKSPACE_LOW, WORKSPACE_HIGH)
        if quat is not None:
            ref[3:] = cartesian_coords(ref[:3], np.asarray(quat, dtype=np.float64))[3:]
        elif yaw is not None:
            ref[3:] = (0.0, 0.0, float(yaw))
        self._set(ref, gripper_width)

    def apply_gripper(self, width: float) -> None:
        self._set(self._reference, width)

    def apply_twist(self, linear, angular, duration: float) -> None:
        """Move the reference at ``linear`` (m/s) and ``angular`` (rad/s), both in the world frame,
        for ``duration`` seconds of simulated time, or until replaced. The angular rate is turned
        into the controller's rotation coordinates (the gripper-down frame)."""
        self._trajectory = None
        ang = _DOWN_ROT.T @ np.asarray(angular, dtype=np.float64)
        self._twist = np.concatenate([np.asarray(linear, dtype=np.float64), ang])
        self._twist_until = self.time + float(duration)

    def apply_joint_positions(self, q) -> None:
        """Joint positions (7 arm joints, or 9 with the fingers) -> TCP reference through FK."""
        self._twist = None
        self._trajectory = None
        self._apply_q(q)

    def apply_joint_trajectory(self, times, positions) -> None:
        """Follow joint positions (N, 7 or 9) at ``times`` (s, from now)."""
        self._twist = None
        q_now, _ = self.sim.joint_state()
        self._trajectory = JointTrajectory(self.time, times, positions, q_now)
        self._apply_q(self._trajectory.sample(self.time))

    def hold(self) -> None:
        """Latch the reference at the measured TCP pose; stop twists and trajectories."""
        self._twist = None
        self._trajectory = None
        pos, quat = self.sim.tcp_pose()
        self._set(cartesian_coords(pos, quat), None)

    def _apply_q(self, q) -> None:
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        pos, quat = self.kinematics.tcp_pose(q[:7])
        ref = cartesian_coords(np.clip(pos, WORKSPACE_LOW, WORKSPACE_HIGH), quat)
        self._set(ref, float(q[7] + q[8]) if q.size == 9 else None)

    def _set(self, ref: np.ndarray, width: float | None) -> None:
        self._reference = np.asarray(ref, dtype=np.float64).copy()
        if width is not None:
            self._width = float(np.clip(width, 0.0, MAX_FINGER_WIDTH))
        self.sim.set_reference(self._reference, self._width)

    # --- time -----------------------------------------------------------------------------------------

    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics steps (``physics_dt`` each), moving twist/trajectory references."""
        if self._twist is None and self._trajectory is None:
            self.sim.step(n)
            self.time += n * self.physics_dt
        else:
            # Twists and trajectories move the reference between physics steps: every 5 steps
            # (10 ms) is plenty for the controller, whose bandwidth is a few Hz.
            done = 0
            while done < n:
                k = min(5, n - done)
                self._advance_reference(k * self.physics_dt)
                self.sim.step(k)
                done += k
                self.time += k * self.physics_dt
        self.steps += n

    def _advance_reference(self, dt: float) -> None:
        if self._twist is not None:
            if self.time >= self._twist_until:
                self._twist = None
                return
            ref = self._reference.copy()
            ref[:3] = np.clip(ref[:3] + self._twist[:3] * dt, WORKSPACE_LOW, WORKSPACE_HIGH)
            ref[3:] = ref[3:] + self._twist[3:] * dt
            self._set(ref, None)
        elif self._trajectory is not None:
            self._apply_q(self._trajectory.sample(self.time + dt))
            if self._trajectory.finished(self.time + dt):
                self._trajectory = None

    # --- state ----------------------------------------------------------------------------------------

    @property
    def reference(self) -> np.ndarray:
        """The controller's 6-D reference (position, rotation coordinates)."""
        return self._reference.copy()

    @property
    def gripper_target(self) -> float:
        return self._width

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions and velocities of the 9 joints, in :data:`JOINT_NAMES` order."""
        return self.sim.joint_state()

    joint_names = JOINT_NAMES
    arm_joints = ARM_JOINTS
    finger_joints = FINGER_JOINTS

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        pos, quat = self.sim.tcp_pose()
        return pos, (-quat if quat[0] < 0 else quat)

    def tcp_velocity(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sim.tcp_velocity()

    def finger_width(self) -> float:
        return self.sim.finger_width()

    def object_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """What a perception system would report: ``name -> (position, quaternion)``.

        Taken from the task's own object observations, so a policy node that turns these poses
        back into ``<name>_pos`` / ``<name>_quat`` observation keys sees what the gym environment
        shows the policy (including task targets such as ``target_pos`` / ``hole_pos``, which
        get the identity orientation)."""
        obs = self.task.observe(self.sim)
        out = {}
        for key, value in obs.items():
            if key.endswith("_pos"):
                name = key[: -len("_pos")]
                quat = obs.get(f"{name}_quat")
                out[name] = (np.asarray(value, dtype=np.float64),
                             np.asarray(quat, dtype=np.float64) if quat is not None else np.array([1.0, 0.0, 0.0, 0.0]))
        return out

    def evaluate(self) -> tuple[bool, float]:
        """(success, dense reward) of the task now (the simulated reward classifier)."""
        return self.task.evaluate(self.env.task_state())

    def render(self, camera: str) -> np.ndarray:
        return self.sim.render(camera)

    def camera_intrinsics(self, camera: str) -> tuple[int, int, float]:
        """(width, height, vertical field of view in degrees) of a scene camera."""
        cam = self.sim.camera(camera)
        return self.sim.image_size, self.sim.image_size, float(cam.fovy)

    @staticmethod
    def yaw_quat(yaw: float) -> np.ndarray:
        return yaw_to_quat(yaw)

    @staticmethod
    def rotation(quat) -> np.ndarray:
        return quat_to_mat(np.asarray(quat, dtype=np.float64))
