"""The safety layer between whatever produces commands (a policy, a person, another node) and the arm.

Every command is checked before it moves anything; a command that fails a check is *rejected*
with a reason string, never repaired, and the arm keeps doing what it did before ("hold"): it
stays at the last accepted reference, and when no command has been accepted for
``command_timeout_s`` the caller latches the reference at the measured pose
(:class:`CommandWatchdog`). The checks:

* shape: wrong length, NaN or inf;
* names: joint commands that name joints this arm does not have, or miss some;
* limits: a Cartesian target outside the workspace box (``serl_ctrl.envs.scene.WORKSPACE_LOW/HIGH``),
  joint positions outside the Panda's limits, a finger opening outside [0, 8 cm];
* per-tick steps: a target farther than ``max_step_m`` / ``max_rot_step_rad`` from the measured TCP
  pose, or joints farther than ``max_joint_step_rad`` from the measured joints (a far jump means
  a bug or a stale frame, not a motion anyone wants);
* time: a command stamped more than ``command_timeout_s`` before now (stale), or more than
  ``future_tolerance_s`` after now (the sender runs on another clock: check ``use_sim_time``).
  A zero stamp means "unstamped" and is accepted when ``allow_unstamped``.

No ROS here: the ROS nodes call these checks with message contents turned into arrays, and the
same class guards the in-process runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..envs.controller import quat_conj, quat_mul, quat_to_rotvec
from ..envs.panda import ARM_JOINTS, FINGER_JOINTS, MAX_FINGER_WIDTH
from ..envs.scene import WORKSPACE_HIGH, WORKSPACE_LOW

# Franka Emika Panda joint limits (rad), from the robot's datasheet. Slightly tighter than the
# pybullet_data URDF the simulators load, so a command accepted here is accepted by a real Panda.
PANDA_Q_MIN = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
PANDA_Q_MAX = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
FINGER_MAX = 0.5 * MAX_FINGER_WIDTH  # m, per finger joint

__all__ = [
    "CommandWatchdog", "PANDA_Q_MAX", "PANDA_Q_MIN", "SafetyError", "SafetyFilter", "SafetyLimits",
    "Verdict", "stale_inputs",
]


class SafetyError(ValueError):
    """A command was rejected; ``str(err)`` is the reason."""


@dataclass(frozen=True)
class SafetyLimits:
    """What the safety layer lets through. Defaults: the Panda in the simulated workspace."""

    workspace_low: tuple[float, float, float] = tuple(WORKSPACE_LOW)
    workspace_high: tuple[float, float, float] = tuple(WORKSPACE_HIGH)
    max_step_m: float = 0.08  # per command, target vs measured TCP position
    max_rot_step_rad: float = 0.6  # per command, target vs measured TCP orientation
    max_joint_step_rad: float = 0.3  # per command, per joint, target vs measured
    max_speed_m_s: float = 0.5  # Cartesian twist commands
    max_ang_speed_rad_s: float = 1.5
    q_min: tuple[float, ...] = tuple(PANDA_Q_MIN)
    q_max: tuple[float, ...] = tuple(PANDA_Q_MAX)
    max_finger_width: float = MAX_FINGER_WIDTH
    command_timeout_s: float = 0.5
    future_tolerance_s: float = 0.05
    allow_unstamped: bool = True

    def __post_init__(self) -> None:
        low, high = np.asarray(self.workspace_low), np.asarray(self.workspace_high)
        if low.shape != (3,) or high.shape != (3,) or np.any(low >= high):
            raise ValueError(f"workspace box must be 3 lows below 3 highs, got {low} / {high}")
        for name in ("max_step_m", "max_rot_step_rad", "max_joint_step_rad", "max_speed_m_s",
                     "max_ang_speed_rad_s", "max_finger_width", "command_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SafetyLimits.{name} must be > 0, got {getattr(self, name)}")
        if len(self.q_min) != len(self.q_max):
            raise ValueError("q_min and q_max must have the same length")


@dataclass(frozen=True)
class Verdict:
    """The result of one check: ``ok``, the reason when not, and the accepted values."""

    ok: bool
    reason: str = ""
    value: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __bool__(self) -> bool:  # `if verdict:` reads as "accepted"
        return self.ok

    def raise_if_rejected(self) -> "Verdict":
        if not self.ok:
            raise SafetyError(self.reason)
        return self


def _reject(reason: str) -> Verdict:
    return Verdict(False, reason)


def _vector(values, n: int | Sequence[int], what: str) -> tuple[np.ndarray | None, str]:
    """Values as a float vector of an allowed length, or (None, why not)."""
    try:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None, f"{what} is not a list of numbers"
    allowed = (n,) if isinstance(n, int) else tuple(n)
    if v.size not in allowed:
        want = " or ".join(str(k) for k in allowed)
        return None, f"{what} has {v.size} values, expected {want}"
    if not np.all(np.isfinite(v)):
        return None, f"{what} contains NaN or inf: {np.round(v, 4).tolist()}"
    return v, ""


class SafetyFilter:
    """Checks commands against :class:`SafetyLimits`. Stateless apart from the limits.

    Times (``now``, ``stamp``) are seconds on one clock (ROS time, simulated or not); ``stamp``
    None skips the time check (in-process callers).
    """

    def __init__(self, limits: SafetyLimits | None = None, joint_names: Sequence[str] = ARM_JOINTS + FINGER_JOINTS):
        self.limits = limits or SafetyLimits()
        self.joint_names = tuple(joint_names)
        self._low = np.asarray(self.limits.workspace_low, dtype=np.float64)
        self._high = np.asarray(self.limits.workspace_high, dtype=np.float64)
        self._q_min = np.asarray(self.limits.q_min, dtype=np.float64)
        self._q_max = np.asarray(self.limits.q_max, dtype=np.float64)

    # --- time --------------------------------------------------------------------------------------

    def check_stamp(self, stamp: float | None, now: float) -> Verdict:
        """Reject stale commands and commands from the future (another clock)."""
        lim = self.limits
        if stamp is None:
            return Verdict(True)
        if stamp == 0.0:
            return Verdict(True) if lim.allow_unstamped else _reject("command is unstamped (stamp 0)")
        if not np.isfinite(stamp):
            return _reject("command stamp is not finite")
        age = now - stamp
        if age > lim.command_timeout_s:
            return _reject(f"stale command: stamped {age:.3f} s ago, timeout {lim.command_timeout_s:.3f} s")
        if age < -lim.future_tolerance_s:
            return _reject(
                f"command stamped {-age:.3f} s in the future: sender and arm use different clocks "
                "(is use_sim_time set on the sender?)"
            )
        return Verdict(True)

    # --- Cartesian ---------------------------------------------------------------------------------

    def check_position(self, pos) -> Verdict:
        v, why = _vector(pos, 3, "target position")
        if v is None:
            return _reject(why)
        eps = 1e-9
        if np.any(v < self._low - eps) or np.any(v > self._high + eps):
            return _reject(
                f"target position {np.round(v, 4).tolist()} is outside the workspace box "
                f"{self._low.tolist()} .. {self._high.tolist()}"
            )
        return Verdict(True, value=v)

    def check_cartesian(self, pos, quat=None, *, tcp_pos=None, tcp_quat=None, stamp=None, now=0.0) -> Verdict:
        """A Cartesian target (position, optional orientation (w, x, y, z)) against the box, the
        per-command step from the measured TCP pose and the stamp. ``value`` = (pos, unit quat)."""
        verdict = self.check_stamp(stamp, now)
        if not verdict:
            return verdict
        verdict = self.check_position(pos)
        if not verdict:
            return verdict
        p = verdict.value
        q = None
        if quat is not None:
            q, why = _vector(quat, 4, "target orientation")
            if q is None:
                return _reject(why)
            norm = np.linalg.norm(q)
            if not 0.9 < norm < 1.1:
                return _reject(f"target orientation is not a unit quaternion (norm {norm:.3f})")
            q = q / norm
        if tcp_pos is not None:
            step = float(np.linalg.norm(p - np.asarray(tcp_pos, dtype=np.float64)))
            if step > self.limits.max_step_m:
                return _reject(
                    f"target is {step:.3f} m from the TCP, more than the per-command limit "
                    f"{self.limits.max_step_m:.3f} m"
                )
        if q is not None and tcp_quat is not None:
            angle = float(np.linalg.norm(quat_to_rotvec(quat_mul(quat_conj(np.asarray(tcp_quat, float)), q))))
            if angle > self.limits.max_rot_step_rad:
                return _reject(
                    f"target orientation is {angle:.3f} rad from the TCP's, more than the per-command "
                    f"limit {self.limits.max_rot_step_rad:.3f} rad"
                )
        return Verdict(True, value=p, extra={"quat": q})

    def check_twist(self, linear, angular, *, stamp=None, now=0.0) -> Verdict:
        verdict = self.check_stamp(stamp, now)
        if not verdict:
            return verdict
        lin, why = _vector(linear, 3, "linear velocity")
        if lin is None:
            return _reject(why)
        ang, why = _vector(angular, 3, "angular velocity")
        if ang is None:
            return _reject(why)
        if np.linalg.norm(lin) > self.limits.max_speed_m_s:
            return _reject(f"linear speed {np.linalg.norm(lin):.3f} m/s exceeds {self.limits.max_speed_m_s} m/s")
        if np.linalg.norm(ang) > self.limits.max_ang_speed_rad_s:
            return _reject(
                f"angular speed {np.linalg.norm(ang):.3f} rad/s exceeds {self.limits.max_ang_speed_rad_s} rad/s"
            )
        return Verdict(True, value=np.concatenate([lin, ang]))

    def check_gripper(self, width) -> Verdict:
        v, why = _vector(width, 1, "gripper width")
        if v is None:
            return _reject(why)
        w = float(v[0])
        if not 0.0 <= w <= self.limits.max_finger_width + 1e-9:
            return _reject(f"gripper width {w:.4f} m is outside [0, {self.limits.max_finger_width}] m")
        return Verdict(True, value=v)

    # --- joints ------------------------------------------------------------------------------------

    def order_joints(self, names: Sequence[str], values) -> Verdict:
        """Reorder named joint values into this arm's order. Unknown, repeated or (for the arm
        joints) missing names are rejected; finger joints may be left out (``value`` then has 7)."""
        names = list(names)
        v, why = _vector(values, len(names) if names else (7, 9), "joint positions")
        if v is None:
            return _reject(why)
        if not names:  # positional, in the controller's joint order
            return Verdict(True, value=v)
        unknown = [n for n in names if n not in self.joint_names]
        if unknown:
            return _reject(f"unknown joint names {unknown}; this arm has {list(self.joint_names)}")
        if len(set(names)) != len(names):
            return _reject(f"repeated joint names in {names}")
        arm = [n for n in self.joint_names if n not in FINGER_JOINTS]
        missing = [n for n in arm if n not in names]
        if missing:
            return _reject(f"joint command misses joints {missing}")
        fingers = [n for n in FINGER_JOINTS if n in names]
        if fingers and len(fingers) != len(FINGER_JOINTS):
            return _reject(f"joint command names {fingers} but not both finger joints {list(FINGER_JOINTS)}")
        order = [n for n in self.joint_names if n in names]
        index = {n: i for i, n in enumerate(names)}
        return Verdict(True, value=np.array([v[index[n]] for n in order]))

    def check_joint_positions(self, values, *, names: Sequence[str] = (), current_q=None, stamp=None,
                              now=0.0) -> Verdict:
        """Joint positions (7 arm joints, optionally + 2 fingers; by ``names`` or in this arm's
        order) against the Panda's limits, the per-command step from ``current_q`` and the stamp.
        ``value`` holds the positions in this arm's joint order."""
        verdict = self.check_stamp(stamp, now)
        if not verdict:
            return verdict
        verdict = self.order_joints(names, values)
        if not verdict:
            return verdict
        q = verdict.value
        if q.size not in (7, 9):
            return _reject(f"joint positions have {q.size} values, expected 7 (arm) or 9 (arm + fingers)")
        arm = q[:7]
        bad = np.flatnonzero((arm < self._q_min) | (arm > self._q_max))
        if bad.size:
            details = ", ".join(
                f"{ARM_JOINTS[i]}={arm[i]:.4f} not in [{self._q_min[i]:.4f}, {self._q_max[i]:.4f}]" for i in bad
            )
            return _reject(f"joint limits: {details}")
        if q.size == 9 and (np.any(q[7:] < -1e-9) or np.any(q[7:] > FINGER_MAX + 1e-9)):
            return _reject(f"finger positions {np.round(q[7:], 4).tolist()} are outside [0, {FINGER_MAX}] m")
        if current_q is not None:
            cur = np.asarray(current_q, dtype=np.float64).reshape(-1)[:7]
            step = np.abs(arm - cur)
            worst = int(np.argmax(step))
            if step[worst] > self.limits.max_joint_step_rad:
                return _reject(
                    f"{ARM_JOINTS[worst]} would jump {step[worst]:.3f} rad in one command, more than "
                    f"{self.limits.max_joint_step_rad:.3f} rad"
                )
        return Verdict(True, value=q)

    def check_trajectory(self, times, positions, *, names: Sequence[str] = (), current_q=None, stamp=None,
                         now=0.0) -> Verdict:
        """A joint trajectory: increasing times, every point within limits, the first point within
        one step of ``current_q``, consecutive points within one step of each other.
        ``value`` = positions (N, 7 or 9) in this arm's order; ``extra['times']`` = (N,)."""
        verdict = self.check_stamp(stamp, now)
        if not verdict:
            return verdict
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if t.size == 0:
            return _reject("trajectory has no points")
        if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) <= 0):
            return _reject(f"trajectory times must be finite, >= 0 and increasing, got {np.round(t, 4).tolist()}")
        if len(positions) != t.size:
            return _reject(f"trajectory has {t.size} times but {len(positions)} points")
        rows = []
        previous = current_q
        for i, p in enumerate(positions):
            v = self.check_joint_positions(p, names=names, current_q=previous)
            if not v:
                return _reject(f"trajectory point {i}: {v.reason}")
            rows.append(v.value)
            previous = v.value
        if len({r.size for r in rows}) != 1:
            return _reject("trajectory points have different lengths")
        return Verdict(True, value=np.stack(rows), extra={"times": t})


def stale_inputs(stamps: Mapping[str, float | None], now: float, timeout_s: float) -> dict[str, str]:
    """Inputs that are missing (stamp None) or older than ``timeout_s`` at ``now``: name -> why.

    The policy node's watchdog: it sends nothing while this is not empty, so the arm holds."""
    out = {}
    for name, stamp in stamps.items():
        if stamp is None:
            out[name] = "no message yet"
        elif now - stamp > timeout_s:
            out[name] = f"{now - stamp:.3f} s old (timeout {timeout_s:.3f} s)"
    return out


class CommandWatchdog:
    """Tracks when the last command was accepted; tells the arm when to hold.

    ``feed(now)`` on every accepted command. ``check(now)`` returns True exactly once when the
    stream has been silent for ``timeout_s`` (the moment to latch the reference), and ``holding``
    stays True until the next ``feed``. Before the first command the arm is holding.
    """

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.last: float | None = None
        self.holding = True
        self.holds = 0

    def feed(self, now: float) -> None:
        self.last = float(now)
        self.holding = False

    def reset(self) -> None:
        self.last = None
        self.holding = True

    def check(self, now: float) -> bool:
        if self.holding or self.last is None:
            return False
        if now - self.last > self.timeout_s:
            self.holding = True
            self.holds += 1
            return True
        return False
