"""The Panda environments: a physics backend x a task, behind the gymnasium API.

Control follows SERL on the real robot: the policy acts at ``control_hz`` (10 Hz by default) with
Cartesian TCP deltas and a gripper command, all in [-1, 1]; each action moves the reference of the
impedance controller that runs underneath at the physics rate (500 Hz). The reference is clipped
into the workspace box, and the controller limits how far it pulls (reference limiting), so no
action can command a violent or out-of-bounds motion.

Observations are a ``Dict``:

* always (proprioception): ``tcp_pose`` (x, y, z, qw, qx, qy, qz), ``tcp_vel`` (linear, angular),
  ``gripper`` (finger opening / 8 cm);
* ``obs="state"`` or ``"both"``: the task's object observations (e.g. ``cube_pos``, ``cube_quat``);
* ``obs="pixels"`` or ``"both"``: ``front`` and ``wrist`` camera images, uint8 (H, W, 3).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .backend import BACKENDS, Backend, make_backend
from .actions import action_to_target
from .controller import ImpedanceGains
from .panda import MAX_FINGER_WIDTH
from .tasks import Task, TaskState, make_task

OBS_MODES = ("state", "pixels", "both")
REWARDS = ("sparse", "dense")


class PandaEnv(gym.Env):
    """A Franka Panda task in MuJoCo or PyBullet. See the module docstring for the spaces.

    Args:
        task: a task name (``reach``, ``pickcube``, ``push``, ``insert``) or a :class:`Task`.
        backend: ``"mujoco"`` or ``"pybullet"``.
        obs: ``"state"``, ``"pixels"`` or ``"both"``.
        image_size: side of the square camera images.
        control_hz: policy rate; the physics runs at 500 Hz underneath.
        reward: ``"sparse"`` (1 on success, else 0) or ``"dense"`` (shaped, in [0, 1]).
        yaw: add a fifth action dimension that turns the gripper about the vertical.
        pos_step: metres of reference motion per unit of action (per control step).
        terminate_on_success: end the episode at the first success (as SERL does). Default: only
            with sparse rewards; with a shaped reward, ending at success would make lingering near
            the goal worth more than reaching it, and the agent learns to avoid success.
        render_mode: ``"rgb_array"`` for :meth:`render` (the front camera at ``render_size``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str | Task = "pickcube",
        backend: str = "mujoco",
        obs: str = "state",
        image_size: int = 128,
        control_hz: float = 10.0,
        reward: str = "sparse",
        yaw: bool = False,
        pos_step: float = 0.03,
        yaw_step: float = 0.2,
        terminate_on_success: bool | None = None,
        render_mode: str | None = None,
        render_size: int = 256,
        gains: ImpedanceGains | None = None,
    ) -> None:
        if obs not in OBS_MODES:
            raise ValueError(f"unknown obs mode {obs!r}; valid: {', '.join(OBS_MODES)}")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; valid: {', '.join(REWARDS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: 'rgb_array' or None")
        if not 1.0 <= control_hz <= 100.0:
            raise ValueError(f"control_hz must be in [1, 100], got {control_hz}")
        if not 16 <= image_size <= 512:
            raise ValueError(f"image_size must be in [16, 512], got {image_size}")
        self.task = make_task(task) if isinstance(task, str) else task
        self.backend_name = backend
        self.obs_mode = obs
        self.reward_mode = reward
        self.yaw = yaw
        self.pos_step = pos_step
        self.yaw_step = yaw_step
        self.yaw_limit = np.pi / 2
        self.terminate_on_success = (reward == "sparse") if terminate_on_success is None else terminate_on_success
        self.render_mode = render_mode
        self.render_size = render_size
        self.image_size = image_size
        self.gains = gains or ImpedanceGains()
        self.sim: Backend = make_backend(backend, self.task.scene(), self.gains, image_size)
        self.control_hz = control_hz
        self.substeps = max(1, int(round(1.0 / (control_hz * self.sim.physics_dt))))
        self.metadata = {**self.metadata, "render_fps": control_hz}

        act_dim = 5 if yaw else 4
        self.action_space = spaces.Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32)
        obs_spaces: dict[str, spaces.Space] = {
            "tcp_pose": spaces.Box(-np.inf, np.inf, shape=(7,), dtype=np.float32),
            "tcp_vel": spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32),
            "gripper": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
        }
        if obs in ("state", "both"):
            obs_spaces.update(self.task.observation_spaces())
        self.cameras = tuple(c.name for c in self.sim.scene.cameras) if obs in ("pixels", "both") else ()
        for cam in self.cameras:
            obs_spaces[cam] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

    # --- gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task.reset(self.sim, self.np_random)
        obs = self._observe()
        success, _ = self.task.evaluate(self.task_state())
        return obs, {"success": success, "is_success": success}

    def step(self, action):
        action = self._check_action(action)
        pos, quat = self.sim.tcp_pose()
        # The same mapping as the ROS policy node and the simulated arm (envs/actions.py).
        target = action_to_target(action, pos, quat, pos_step=self.pos_step,
                                  yaw_step=self.yaw_step if self.yaw else None, yaw_limit=self.yaw_limit)
        self.sim.set_reference(target.coords(), target.gripper_width)
        self.sim.step(self.substeps)

        success, dense = self.task.evaluate(self.task_state())
        reward = dense if self.reward_mode == "dense" else float(success)
        terminated = bool(success and self.terminate_on_success)
        info = {"success": success, "is_success": success, "dense_reward": dense}
        return self._observe(), reward, terminated, False, info

    def render(self):
        if self.render_mode != "rgb_array":
            raise RuntimeError("render() needs render_mode='rgb_array' at construction")
        return self.sim.render("front", self.render_size, self.render_size)

    def close(self) -> None:
        if getattr(self, "sim", None) is not None:
            self.sim.close()
            self.sim = None

    # --- helpers ----------------------------------------------------------------------------------

    def task_state(self) -> TaskState:
        """Privileged state (object positions, targets): for rewards and scripted experts only."""
        return self.task.state(self.sim)

    def _check_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action has shape {a.shape}, expected {self.action_space.shape} "
                f"(dx, dy, dz{', dyaw' if self.yaw else ''}, gripper)"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"action contains NaN or inf: {a.tolist()}")
        return a  # clipped to [-1, 1] by action_to_target

    def _observe(self) -> dict[str, np.ndarray]:
        pos, quat = self.sim.tcp_pose()
        if quat[0] < 0:
            quat = -quat
        lin, ang = self.sim.tcp_velocity()
        obs = {
            "tcp_pose": np.concatenate([pos, quat]).astype(np.float32),
            "tcp_vel": np.concatenate([lin, ang]).astype(np.float32),
            "gripper": np.array([min(max(self.sim.finger_width() / MAX_FINGER_WIDTH, 0.0), 1.0)], dtype=np.float32),
        }
        if self.obs_mode != "pixels":
            obs.update(self.task.observe(self.sim))
        for cam in self.cameras:
            obs[cam] = self.sim.render(cam)
        return obs
