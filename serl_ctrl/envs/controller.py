"""The Cartesian impedance controller that runs underneath every policy.

SERL drives the real Franka with a Cartesian impedance controller at 1 kHz whose reference is
*limited*: the pose error fed to the spring is clipped per axis, so a policy that asks for a far
target (or pushes into a table) produces a bounded force instead of a violent one. The policy acts
at 10-20 Hz by moving that reference.

The law, per Cartesian axis i (3 translations, 3 rotations, expressed in a reference frame):

    F_i = K_i * clip(ref_i - x_i, -c_i, c_i) - D_i * v_i
    tau = J^T F + g(q) + K_null * (q_home - q) - D_null * dq,   clipped to the joint torque limits

where x is the TCP position in the world frame and, for rotations, the rotation vector of the TCP
orientation relative to the nominal "gripper pointing down" frame (``DOWN_QUAT``). This is exactly
what MuJoCo computes for a ``general`` actuator with a site transmission and a ``refsite``: the
MuJoCo backend compiles the law into actuators (so it runs in C at the physics rate), the PyBullet
backend evaluates :func:`joint_torques` in NumPy at every physics step. Both read the same
:class:`ImpedanceGains`, so the two simulators are driven by one controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Orientation (w, x, y, z) of the nominal TCP frame: the gripper pointing straight down,
# i.e. a rotation of pi about the world x axis. Rotational errors are rotation vectors relative
# to this frame, which keeps them far from the rotation-vector singularity at pi.
DOWN_QUAT = np.array([0.0, 1.0, 0.0, 0.0])

# Franka Panda joint torque limits (N m), from the robot's datasheet / URDF.
PANDA_TORQUE_LIMITS = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])


@dataclass(frozen=True)
class ImpedanceGains:
    """Gains of the Cartesian impedance controller and its gripper.

    The defaults are tuned for the Panda description shipped with pybullet_data at a 2 ms physics
    step: critically damped-ish translation, a reference clip of 3 cm / 0.3 rad (the largest spring
    force is ``stiffness * clip``), and a weak joint-space posture spring that keeps the redundant
    elbow near the home posture.
    """

    pos_stiffness: float = 1000.0  # N/m
    pos_damping: float = 90.0  # N s/m
    pos_clip: float = 0.03  # m: reference limiting, per axis
    rot_stiffness: float = 40.0  # N m/rad
    rot_damping: float = 5.0  # N m s/rad
    rot_clip: float = 0.3  # rad
    null_stiffness: float = 0.5  # N m/rad, joint space, towards the home posture
    null_damping: float = 0.5  # N m s/rad
    joint_damping: float = 0.5  # N m s/rad, passive damping in every arm joint
    finger_stiffness: float = 400.0  # N/m, per finger
    finger_damping: float = 8.0  # N s/m
    finger_force: float = 30.0  # N, the largest squeeze per finger
    torque_limits: tuple[float, ...] = field(default=tuple(PANDA_TORQUE_LIMITS))

    def stiffness(self) -> np.ndarray:
        return np.array([self.pos_stiffness] * 3 + [self.rot_stiffness] * 3)

    def damping(self) -> np.ndarray:
        return np.array([self.pos_damping] * 3 + [self.rot_damping] * 3)

    def clip(self) -> np.ndarray:
        return np.array([self.pos_clip] * 3 + [self.rot_clip] * 3)


# --- small rotation helpers (quaternions are w, x, y, z) ------------------------------------------


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a unit quaternion, taking the short way round."""
    q = np.asarray(q, dtype=float)
    if q[0] < 0:
        q = -q
    s = np.linalg.norm(q[1:])
    if s < 1e-12:
        return 2.0 * q[1:]
    angle = 2.0 * np.arctan2(s, q[0])
    return q[1:] / s * angle


def rotvec_to_quat(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    angle = np.linalg.norm(r)
    if angle < 1e-12:
        return np.array([1.0, *(0.5 * r)])
    axis = r / angle
    return np.array([np.cos(angle / 2), *(np.sin(angle / 2) * axis)])


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def orientation_error_coords(tcp_quat: np.ndarray) -> np.ndarray:
    """Rotational coordinates of a TCP orientation: its rotation vector relative to DOWN_QUAT.

    Same convention as MuJoCo's refsite transmission (``mju_subQuat(site, refsite)``), expressed
    in the DOWN frame: (0, 0, yaw) is the gripper pointing down, turned by ``yaw`` about the DOWN
    frame's z axis (which points to the floor).
    """
    return quat_to_rotvec(quat_mul(quat_conj(DOWN_QUAT), tcp_quat))


def yaw_to_quat(yaw: float) -> np.ndarray:
    """TCP orientation for the gripper pointing down, turned by ``yaw`` (DOWN-frame z)."""
    return quat_mul(DOWN_QUAT, rotvec_to_quat(np.array([0.0, 0.0, yaw])))


def cartesian_coords(tcp_pos: np.ndarray, tcp_quat: np.ndarray) -> np.ndarray:
    """The 6 coordinates the springs act on: world position, then rotation relative to DOWN."""
    return np.concatenate([tcp_pos, orientation_error_coords(tcp_quat)])


def cartesian_velocity(lin_vel: np.ndarray, ang_vel_world: np.ndarray) -> np.ndarray:
    """TCP velocity in the same coordinates: linear in world, angular in the DOWN frame."""
    r_down = quat_to_mat(DOWN_QUAT)
    return np.concatenate([lin_vel, r_down.T @ ang_vel_world])


def impedance_wrench(
    reference: np.ndarray, coords: np.ndarray, velocity: np.ndarray, gains: ImpedanceGains
) -> np.ndarray:
    """The 6 generalised forces of the reference-limited spring-damper (see module docstring)."""
    error = np.clip(reference - coords, -gains.clip(), gains.clip())
    return gains.stiffness() * error - gains.damping() * velocity


def joint_torques(
    jacobian: np.ndarray,
    wrench: np.ndarray,
    q: np.ndarray,
    dq: np.ndarray,
    q_home: np.ndarray,
    gravity: np.ndarray,
    gains: ImpedanceGains,
) -> np.ndarray:
    """Arm joint torques for a wrench in the controller's coordinates.

    ``jacobian`` is 6x7 and maps joint velocities to ``cartesian_velocity`` (linear world rows,
    angular rows already rotated into the DOWN frame); ``gravity`` is the arm's gravity torque.
    The posture spring is not projected into the null space: it is weak, and MuJoCo's actuators
    cannot express the projection, so both backends keep the same, simple law.
    """
    tau = jacobian.T @ wrench + gravity
    tau += gains.null_stiffness * (q_home - q) - gains.null_damping * dq
    limits = np.asarray(gains.torque_limits)
    return np.clip(tau, -limits, limits)


def finger_force(target_width: float, q: np.ndarray, dq: np.ndarray, gains: ImpedanceGains) -> np.ndarray:
    """Force on each finger joint: a force-limited PD towards half the target opening."""
    target = np.full(2, 0.5 * target_width)
    f = gains.finger_stiffness * (target - q) - gains.finger_damping * dq
    return np.clip(f, -gains.finger_force, gains.finger_force)
