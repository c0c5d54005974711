"""Composable wrappers around the Panda environments (SERL's style: one env, many wrappers).

* :class:`InterventionWrapper` lets a human (keyboard in simulation, a teleop topic on ROS) take
  over: the human's action replaces the policy's, and ``info["intervened"]`` marks the step so the
  learner can put it in the demonstration buffer too (HIL-SERL).
* :class:`RewardModelWrapper` replaces the task reward with a learned success classifier, as on a
  real robot where nothing measures success for you.
"""

from __future__ import annotations

import select
import sys
from typing import Callable, Protocol

import gymnasium as gym
import numpy as np


class Teleop(Protocol):
    """A source of human actions: ``poll(obs)`` returns an action to execute, or None."""

    def reset(self) -> None: ...

    def poll(self, obs) -> np.ndarray | None: ...


class InterventionWrapper(gym.Wrapper):
    """Replace the policy's action with the teleoperator's whenever it offers one.

    ``info["intervened"]`` is True on those steps and ``info["executed_action"]`` holds what was
    actually executed: that, not the policy's proposal, is what the replay buffers must store.
    """

    def __init__(self, env: gym.Env, teleop: Teleop) -> None:
        super().__init__(env)
        self.teleop = teleop
        self.interventions = 0
        self._obs = None

    def reset(self, **kwargs):
        self.teleop.reset()
        self._obs, info = self.env.reset(**kwargs)
        info["intervened"] = False
        return self._obs, info

    def step(self, action):
        human = self.teleop.poll(self._obs)
        intervened = human is not None
        executed = np.asarray(human if intervened else action, dtype=np.float32)
        self._obs, reward, terminated, truncated, info = self.env.step(executed)
        self.interventions += int(intervened)
        info["intervened"] = intervened
        info["executed_action"] = executed
        return self._obs, reward, terminated, truncated, info


class ExpertTeleop:
    """A scripted "human": takes over with the task's expert while ``should_intervene(state)`` holds.

    Used in simulation to study interventions reproducibly (the default intervenes when the
    gripper drifts more than ``radius`` from the object it should approach, as a person would).
    """

    def __init__(self, env: gym.Env, should_intervene: Callable | None = None, max_steps: int = 10) -> None:
        self.base = env.unwrapped
        self.expert = self.base.task.expert()
        self.should_intervene = should_intervene or self._far_from_object
        self.max_steps = max_steps  # hand control back after this many steps, as people do
        self._active = 0

    @staticmethod
    def _far_from_object(state, radius: float = 0.15) -> bool:
        if not state.objects:
            return False
        obj = next(iter(state.objects.values()))
        return bool(np.linalg.norm(obj[:2] - state.tcp_pos[:2]) > radius)

    def reset(self) -> None:
        self.expert.reset()
        self._active = 0

    def poll(self, obs) -> np.ndarray | None:
        state = self.base.task_state()
        if self._active == 0 and not self.should_intervene(state):
            return None
        self._active += 1
        if self._active >= self.max_steps:
            self._active = 0
        move, _ = self.expert.act(state)
        action = np.zeros(self.base.action_space.shape, dtype=np.float32)
        action[:3], action[-1] = move[:3], move[3]
        return action


class KeyboardTeleop:
    """Teleoperation from the terminal: w/s x, a/d y, r/f z, space toggles the gripper.

    Reads keys without blocking (the terminal must be in cbreak mode: ``tty.setcbreak``); a key
    press produces one intervening step. Meant for interactive use in simulation.
    """

    KEYS = {"w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0)}

    def __init__(self, action_dim: int = 4, stream=None) -> None:
        self.action_dim = action_dim
        self.stream = stream or sys.stdin
        self.gripper = -1.0

    def reset(self) -> None:
        self.gripper = -1.0

    def poll(self, obs) -> np.ndarray | None:
        if not select.select([self.stream], [], [], 0)[0]:
            return None
        key = self.stream.read(1)
        action = np.zeros(self.action_dim, dtype=np.float32)
        if key == " ":
            self.gripper = -self.gripper
        elif key in self.KEYS:
            axis, sign = self.KEYS[key]
            action[axis] = sign
        else:
            return None
        action[-1] = self.gripper
        return action


class RewardModelWrapper(gym.Wrapper):
    """Use a learned success classifier as the reward: 1 when P(success | obs) >= ``threshold``.

    ``classifier(obs) -> probability``. With ``terminate`` the episode ends on predicted success,
    as SERL does on the real robot. The task's own success stays in ``info["success"]`` for
    evaluation; the classifier's in ``info["predicted_success"]`` and ``info["success_prob"]``.
    """

    def __init__(self, env: gym.Env, classifier: Callable[[dict], float], threshold: float = 0.5,
                 terminate: bool = True) -> None:
        super().__init__(env)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.classifier = classifier
        self.threshold = threshold
        self.terminate = terminate

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        prob = float(self.classifier(obs))
        predicted = prob >= self.threshold
        info["success_prob"] = prob
        info["predicted_success"] = predicted
        if self.terminate:
            terminated = bool(predicted)
        return obs, float(predicted), terminated, truncated, info
