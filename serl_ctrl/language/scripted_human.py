"""A scripted "human" that watches the simulated robot and speaks (or types) corrections.

It stands in for the person of Yell At Your Robot, so that the hierarchy can be measured alone,
with live corrections and after fine-tuning on them, on as many seeds as wanted:

* :class:`ExpertLabeler` is what the person knows: the task's scripted expert (the one that
  labelled the demonstrations, :class:`~serl_ctrl.envs.tasks.base.WaypointExpert`), run on the
  true state of the simulation, says which instruction fits the current state (the cube is 2 cm
  left of the gripper -> "move a bit to the left"). When the robot has stayed in the script's last
  segment for ``stall_steps`` steps without success (it lifted without the cube, say), the person
  knows the attempt failed and the script starts over.
* :class:`ScriptedHuman` compares that with the instruction the robot is executing. When the
  robot's instruction is wrong for ``patience`` consecutive steps, and ``cooldown`` steps have
  passed since it last spoke, it says the right instruction (optionally in varied words: "um, go
  down please"). It is not pedantic about timing: the coarse label of the expert's segment, a small
  correction in the right direction, or moving on to the next segment once the current one is
  nearly done (1.5 cm) are all right.
* :class:`SpokenChannel` turns what the human says into audio with espeak-ng and back into text
  with the offline recogniser, so the same runs can go through speech recognition.
* :class:`ExpertPlanner` uses the labeler as a perfect planner (the low-level policy's upper bound).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..envs.tasks.base import FINE_LABELS, fine_label

__all__ = ["ExpertLabeler", "ExpertPlanner", "ScriptedHuman", "SpokenChannel", "PHRASINGS"]

#: Ways the scripted human may phrase an instruction in ``phrasing="varied"`` mode; each parses back
#: to the same instruction (``tests/test_hierarchy.py`` checks it).
PHRASINGS = ("{}", "{} please", "please {}", "um, {}", "{}, robot", "okay, {}")


class ExpertLabeler:
    """The task's scripted expert as a judge of the current state (see the module docstring).

    Args:
        task: the env's task (``env.unwrapped.task``).
        stall_steps: steps in the script's last segment without success before the judge decides
            the attempt failed and starts the script over.
        near_xy, near_z: how close (m) to a segment's target counts as "nearly done" when the robot
            moves on to a later segment before the script would (people are less strict than the
            expert's own tolerances).
        closed_width: a closing segment is nearly done once the fingers are closer than this (m).
    """

    def __init__(self, task: Any, stall_steps: int = 10, near_xy: float = 0.015, near_z: float = 0.02,
                 closed_width: float = 0.045) -> None:
        self.task = task
        self.expert = task.expert()
        self.stall_steps = int(stall_steps)
        self.near_xy, self.near_z, self.closed_width = float(near_xy), float(near_z), float(closed_width)
        self._in_last = 0

    def reset(self) -> None:
        self.expert.reset()
        self._in_last = 0

    @property
    def segment(self) -> str:
        """The coarse label of the expert's current segment."""
        return self.expert.segments[self.expert.index].instruction

    def label(self, state: Any, success: bool = False) -> str:
        """The instruction the expert gives for ``state`` (advances the expert's script)."""
        ex = self.expert
        if ex.index == len(ex.segments) - 1 and not success:
            self._in_last += 1
            if self._in_last > self.stall_steps:
                ex.reset()
                self._in_last = 0
        else:
            self._in_last = 0
        _, instruction = ex.act(state)
        return instruction

    def nearly_done(self, index: int, state: Any) -> bool:
        """Whether segment ``index`` is done to a person's eye in ``state``."""
        seg = self.expert.segments[index]
        d = seg.target(state) - state.tcp_pos
        if float(np.linalg.norm(d[:2])) > self.near_xy or abs(float(d[2])) > self.near_z:
            return False
        return not (seg.gripper > 0 and state.finger_width > self.closed_width)

    def accepts(self, state: Any, executed: str) -> bool:
        """Whether a person would let the robot follow ``executed`` now (see :class:`ScriptedHuman`);
        a later segment that is accepted becomes the script's current one."""
        ex = self.expert
        if executed == self.segment:
            return True
        seg = ex.segments[ex.index]
        d = seg.target(state) - state.tcp_pos
        if executed in FINE_LABELS.values() and float(np.linalg.norm(d)) > 0.004 and executed == fine_label(d):
            return True  # a small correction in the right direction
        for j in range(ex.index + 1, len(ex.segments)):
            if ex.segments[j].instruction == executed:
                if all(self.nearly_done(k, state) for k in range(ex.index, j)):
                    ex.index, ex.steps = j, 0
                    return True
                return False
        return False

    def behind(self, executed: str) -> bool:
        """Whether ``executed`` is an earlier segment's instruction (the robot lags the script)."""
        return any(s.instruction == executed for s in self.expert.segments[: self.expert.index])


class ExpertPlanner:
    """A perfect planner: the expert's label of the true simulation state (needs the env)."""

    def __init__(self, env: Any) -> None:
        self.env = env.unwrapped
        self.labeler = ExpertLabeler(self.env.task)

    def reset(self) -> None:
        self.labeler.reset()

    def next(self, obs: Mapping[str, Any]) -> str:
        return self.labeler.label(self.env.task_state())


class ScriptedHuman:
    """Watches states and the executed instruction; returns an utterance when a correction is due.

    Args:
        task: the env's task (``env.unwrapped.task``).
        patience: consecutive wrong steps before it speaks (its reaction time, in control steps).
        cooldown: steps between two utterances (a person needs time to speak).
        phrasing: ``"canonical"`` (the instruction itself) or ``"varied"`` (:data:`PHRASINGS`).
        seed: seeds the choice of phrasing.
    """

    def __init__(self, task: Any, *, patience: int = 2, cooldown: int = 4, phrasing: str = "canonical",
                 stall_steps: int = 10, seed: int = 0) -> None:
        if phrasing not in ("canonical", "varied"):
            raise ValueError(f"phrasing must be 'canonical' or 'varied', got {phrasing!r}")
        if patience < 1 or cooldown < 0:
            raise ValueError("patience must be >= 1 and cooldown >= 0")
        self.labeler = ExpertLabeler(task, stall_steps)
        self.patience, self.cooldown, self.phrasing = int(patience), int(cooldown), phrasing
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.labeler.reset()
        self._wrong = 0
        self._since = 10**9
        self.last_label = ""

    def watch(self, state: Any, executed: str, success: bool = False) -> str | None:
        """Judge one step: ``state`` is the task state after it, ``executed`` the instruction the
        robot followed. Returns what the human says, or None.

        Right: the expert's label, its segment's coarse label, a small correction pointing the right
        way, or a later segment once the skipped ones are nearly done. A robot that lags the script
        (an earlier segment's instruction) gets twice the patience: it is slow, not wrong yet.
        """
        want = self.labeler.label(state, success)
        self.last_label = want
        self._since += 1
        if success or executed == want or self.labeler.accepts(state, executed):
            self._wrong = 0
            return None
        self._wrong += 1
        patience = self.patience * (2 if self.labeler.behind(executed) else 1)
        if self._wrong < patience or self._since < self.cooldown:
            return None
        self._since = 0
        self._wrong = 0
        return self.say(want)

    def say(self, instruction: str) -> str:
        if self.phrasing == "canonical":
            return instruction
        return PHRASINGS[int(self._rng.integers(len(PHRASINGS)))].format(instruction)


class SpokenChannel:
    """Text -> espeak-ng speech (WAV) -> the offline recogniser -> heard text.

    Synthesis and recognition are deterministic, so each distinct utterance is spoken and
    recognised once and the result reused (``latency_ms`` is the recogniser's, measured then).
    """

    def __init__(self, recognizer: Any = None, voice: str = "en-us", speed: int = 160,
                 workdir: str | Path | None = None) -> None:
        from .speech import Recognizer, espeak_binary

        if espeak_binary() is None:
            raise RuntimeError("spoken corrections need espeak-ng (apt-get install espeak-ng)")
        self.recognizer = recognizer or Recognizer()
        self.voice, self.speed = voice, int(speed)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="serl_ctrl_speech_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, Any] = {}

    def wav(self, text: str) -> Path:
        """The WAV file of ``text`` (synthesised on first use)."""
        from .speech import synthesize

        name = hashlib.sha1(f"{self.voice}|{self.speed}|{text}".encode()).hexdigest()[:16]
        path = self.workdir / f"{name}.wav"
        if not path.is_file():
            synthesize(text, path, voice=self.voice, speed=self.speed)
        return path

    def hear(self, text: str):
        """The :class:`~serl_ctrl.language.speech.Recognition` of ``text`` spoken aloud."""
        r = self._cache.get(text)
        if r is None:
            r = self.recognizer.recognize_file(self.wav(text))
            self._cache[text] = r
        return r
