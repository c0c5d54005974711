"""The one mapping from a policy action to a Cartesian target, shared by every place that runs one.

A policy of the Panda environments acts with ``(dx, dy, dz[, dyaw], gripper)`` in [-1, 1]. The
environment (:meth:`serl_ctrl.envs.panda_env.PandaEnv.step`), the simulated arm and the ROS
policy node must turn that into the same impedance reference, or a policy trained in one place
behaves differently in another. The rule (SERL's relative control):

* position: ``clip(tcp_pos + a[:3] * pos_step, WORKSPACE_LOW, WORKSPACE_HIGH)``: a step of at
  most ``pos_step`` metres per axis from where the TCP *is* (not from the previous reference);
* yaw (only with a 5-D action): ``clip(yaw_now + a[3] * yaw_step, -yaw_limit, yaw_limit)``, where
  ``yaw_now`` is the TCP's turn about the gripper-down axis; without it the yaw reference is 0;
* gripper: ``a[-1] = -1`` opens fully (8 cm), ``+1`` closes: width ``(1 - g) / 2 * 0.08``.

Only NumPy and the environment's constants: importable on the robot without a simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .controller import orientation_error_coords, yaw_to_quat
from .panda import MAX_FINGER_WIDTH
from .scene import WORKSPACE_HIGH, WORKSPACE_LOW

DEFAULT_POS_STEP = 0.03  # m per unit action per control step (PandaEnv's default)
DEFAULT_YAW_STEP = 0.2  # rad
DEFAULT_YAW_LIMIT = np.pi / 2
_DOWN_QUAT = yaw_to_quat(0.0)
_DOWN_QUAT.flags.writeable = False

__all__ = [
    "CartesianTarget", "action_to_target", "gripper_width", "width_to_gripper_action", "DEFAULT_POS_STEP",
]


@dataclass(frozen=True)
class CartesianTarget:
    """An impedance reference: TCP position (3,), yaw about the gripper-down axis, finger opening.

    ``yaw`` is None when the action had no yaw dimension (the reference keeps yaw 0, as PandaEnv).
    """

    position: np.ndarray
    yaw: float | None
    gripper_width: float
    quaternion: np.ndarray = field(init=False, repr=False)  # (w, x, y, z): gripper down, turned by yaw

    def __post_init__(self) -> None:
        quat = _DOWN_QUAT if self.yaw is None else yaw_to_quat(self.yaw)
        object.__setattr__(self, "quaternion", quat)

    def coords(self) -> np.ndarray:
        """The 6 controller coordinates (see :func:`serl_ctrl.envs.controller.cartesian_coords`)."""
        return np.array([*self.position, 0.0, 0.0, 0.0 if self.yaw is None else self.yaw])


def gripper_width(g: float) -> float:
    """Finger opening (m) for a gripper action in [-1, 1]: -1 fully open, +1 closed."""
    return 0.5 * (1.0 - float(g)) * MAX_FINGER_WIDTH


def width_to_gripper_action(width: float) -> float:
    """Inverse of :func:`gripper_width` (clipped to [-1, 1])."""
    return float(np.clip(1.0 - 2.0 * float(width) / MAX_FINGER_WIDTH, -1.0, 1.0))


def action_to_target(
    action,
    tcp_pos,
    tcp_quat=None,
    *,
    pos_step: float = DEFAULT_POS_STEP,
    yaw_step: float | None = None,
    yaw_limit: float = DEFAULT_YAW_LIMIT,
    workspace_low=WORKSPACE_LOW,
    workspace_high=WORKSPACE_HIGH,
) -> CartesianTarget:
    """The Cartesian target for ``action`` taken at TCP pose (``tcp_pos``, ``tcp_quat``).

    ``action`` has 4 entries ``(dx, dy, dz, gripper)`` or, when ``yaw_step`` is given, 5
    ``(dx, dy, dz, dyaw, gripper)`` (then ``tcp_quat`` is needed). Values are clipped to [-1, 1];
    NaN/inf or a wrong length raise ValueError (the caller decides whether to hold).
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    expected = 5 if yaw_step is not None else 4
    if a.shape != (expected,):
        layout = "(dx, dy, dz, dyaw, gripper)" if yaw_step is not None else "(dx, dy, dz, gripper)"
        raise ValueError(f"action has {a.size} entries, expected {expected} {layout}")
    if not np.isfinite(a).all():
        raise ValueError(f"action contains NaN or inf: {a.tolist()}")
    # np.minimum/np.maximum rather than np.clip: its dispatch overhead is most of this function's
    # cost, and it runs at every control step.
    a = np.minimum(np.maximum(a, -1.0), 1.0)
    pos = np.minimum(np.maximum(np.asarray(tcp_pos, dtype=np.float64) + a[:3] * pos_step, workspace_low),
                     workspace_high)
    yaw = None
    if yaw_step is not None:
        if tcp_quat is None:
            raise ValueError("a yaw action needs the TCP orientation (tcp_quat)")
        yaw_now = float(orientation_error_coords(np.asarray(tcp_quat, dtype=np.float64))[2])
        yaw = float(np.clip(yaw_now + a[3] * yaw_step, -yaw_limit, yaw_limit))
    return CartesianTarget(pos, yaw, gripper_width(a[-1]))
