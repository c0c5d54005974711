"""The language hierarchy of Yell At Your Robot: a planner picks instructions, a language-conditioned
policy executes them, and a person's correction overrides the planner at once.

Each control tick (:meth:`Hierarchy.act`):

1. the planner sees the observation and names an instruction (it always sees every observation, so
   its history stays current while it is overridden);
2. an active correction replaces that instruction. A correction holds for ``hold_steps`` ticks,
   until another one arrives, or until the segment changes: once the planner itself agrees with the
   correction and later moves on to another instruction, the correction is released early;
3. the low-level policy acts on ``{observation..., "instruction_embedding": MiniLM(instruction)}``.
   When the instruction changes, the policy's queued actions are dropped, so a correction takes
   effect on the very next tick, not after the rest of an action chunk.

Safety and bad input:

* ``"stop"`` (said anywhere in an utterance) halts motion on the next tick: zero Cartesian motion,
  the gripper kept as it is (a held object is not dropped), the policy's queue and history
  flushed. The robot stays stopped until a new correction (which then runs) or :meth:`resume`.
* Unrecognised text changes nothing: it is logged (python logging and :attr:`Hierarchy.events`)
  and ``correct`` returns None. Text is only ever parsed against the vocabulary, never executed.
* A recognised instruction the low-level policy was not trained on (listed in its metadata) is not
  fed to it: relative motions ("move to the left", 5 cm) and gripper commands run as a short direct
  motion instead; an unknown skill is logged and ignored.
* ``"slow down"`` / ``"speed up"`` scale the Cartesian part of the actions (within [0.25, 1]).

Every recognised correction is appended to the corrections log with the observation history it
answered (:mod:`serl_ctrl.language.corrections`), for ``serl-ctrl finetune-planner``: one entry for
each of its first ``log_ticks`` ticks, and for up to ``backdate`` ticks before it in which the
planner was already executing the instruction the person corrected.

The arbitration (planner vs corrections, hold, release, stop, the log) is
:class:`InstructionArbiter`; the ROS ``planner_node`` runs the same class. :class:`Hierarchy` adds
the low-level policy.

:func:`run_episodes` runs the whole loop in simulation with a scripted human, spoken corrections,
WAV files or typed ones, and reports the success rate.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .conditioning import INSTRUCTION_KEY, InstructionTable
from .corrections import CorrectionEntry, CorrectionLog
from .vocabulary import Command, parse

__all__ = ["Hierarchy", "HierarchyEvent", "InstructionArbiter", "run_episodes", "Injection", "MIN_SPEED",
           "low_level_instructions", "load_low_level", "expert_instruction_success"]

LOG = logging.getLogger("serl_ctrl.language.hierarchy")
MIN_SPEED = 0.25


@dataclass(frozen=True)
class HierarchyEvent:
    """Something that happened to the hierarchy: ``kind`` is correction, stop, speed, unrecognised,
    ignored, released or resumed."""

    episode: int
    step: int
    kind: str
    text: str
    instruction: str
    source: str


@dataclass
class _Active:
    command: Command
    left: int
    text: str = ""
    source: str = ""
    group: int = -1
    agreed: bool = False
    logged: int = 0


def low_level_instructions(policy: Any) -> list[str] | None:
    """The instructions a low-level policy was trained on (None when it does not say)."""
    for holder in (getattr(policy, "model", None), policy):
        md = getattr(holder, "metadata", None)
        if isinstance(md, Mapping) and md.get("instructions"):
            return list(md["instructions"])
    spec = getattr(policy, "spec", None)
    extra = getattr(spec, "extra", None) or {}
    if extra.get("instructions"):
        return list(extra["instructions"])
    return None


def load_low_level(path: str | Path) -> Any:
    """A language-conditioned low-level policy as a runtime ``Policy``.

    ``path`` is an exported ``.onnx`` file (or a policy shipped in ``policies/``), or a training run
    folder / checkpoint of ``serl-ctrl train --language`` (``RUN``, ``RUN/model.json``): the latter
    runs in torch the same graph the export writes (the sampler's noise at its mode, zeros), so it
    acts exactly like the exported file. The instructions it was trained on are in
    ``policy.metadata["instructions"]``.
    """
    p = Path(path)
    ckpt = None
    if p.is_dir() and (p / "model.json").is_file():
        ckpt = p / "model"
    elif p.suffix in (".json", ".safetensors") and p.with_suffix(".json").is_file():
        ckpt = p.with_suffix("")
    if ckpt is None:
        if p.is_dir():
            if not (p / "policy.onnx").is_file():
                raise FileNotFoundError(f"{p} holds neither model.json (a checkpoint) nor policy.onnx")
            p = p / "policy.onnx"
        from ..runtime import load_policy

        policy = load_policy(str(p))
        policy.metadata = {"instructions": list((policy.spec.extra or {}).get("instructions") or [])}
        return policy
    from ..agents.imitation import load_policy as load_imitation, runtime_policy
    from ..runtime.torch_policy import TorchPolicy

    model = load_imitation(ckpt)
    policy = TorchPolicy(model.export_modules()["deploy"], runtime_policy(model).spec)
    policy.metadata = dict(model.metadata)
    return policy


class InstructionArbiter:
    """Who decides the instruction: the planner, unless a correction is in force (no actions here).

    Shared by :class:`Hierarchy` (in one process) and the ROS ``planner_node``. Each :meth:`tick`
    runs the planner on the observation and returns ``(instruction, source)`` with ``source`` one of
    ``planner``, ``correction`` or ``stop``; :meth:`correct` applies free text, a Command or a speech
    Recognition (see the module docstring for the rules). Corrections go to ``log`` with their
    observation history.

    Args:
        planner: ``reset()`` and ``next(obs) -> instruction``.
        hold_steps: ticks a correction overrides the planner at most.
        log: a :class:`~serl_ctrl.language.corrections.CorrectionLog` (None: keep none).
        log_ticks: ticks of each correction written to the log (its first ones; None: every tick it
            holds). The tail of a held correction is often stale (the robot has done what was asked
            and the next thing is due), and stale labels teach the planner to dawdle.
        backdate: also log up to this many ticks before the correction, when the planner was already
            executing the instruction the person corrected: a person reacts after the mistake, and
            the planner has to learn the state in which it made it.
    """

    def __init__(self, planner: Any, *, hold_steps: int = 10, log: CorrectionLog | None = None,
                 log_ticks: int | None = 3, backdate: int = 2) -> None:
        if hold_steps < 1:
            raise ValueError(f"hold_steps must be >= 1, got {hold_steps}")
        self.planner = planner
        self.hold_steps = int(hold_steps)
        self.log = log
        self.log_ticks = None if log_ticks is None else int(log_ticks)
        self.backdate = int(backdate)
        self.events: list[HierarchyEvent] = []
        self.episode = -1
        self._group = -1
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=log.history if log is not None else 1)
        self._recent: deque[tuple[dict[str, np.ndarray], str, str]] = deque(maxlen=max(self.backdate, 1))
        self.reset()

    def reset(self, episode: int | None = None) -> None:
        """Start an episode: the planner reset, no correction in force, not stopped, full speed."""
        self.episode = self.episode + 1 if episode is None else int(episode)
        self.step = 0
        self.planner.reset()
        self._active: _Active | None = None
        self.stopped = False
        self.speed = 1.0
        self.instruction = ""
        self.planned = ""
        self.source = "planner"
        self._history.clear()
        self._recent.clear()
        self._pending: list = []
        self._window: dict[str, np.ndarray] | None = None
        self.corrections = 0
        self.unrecognised = 0

    @property
    def correction(self) -> str | None:
        """The instruction of the correction in force (None when the planner decides)."""
        return self._active.command.instruction if self._active is not None else None

    def event(self, kind: str, text: str, instruction: str, source: str) -> None:
        self.events.append(HierarchyEvent(self.episode, self.step, kind, text, instruction, source))

    # --- corrections ------------------------------------------------------------------------------

    def understand(self, utterance: Any, source: str = "typed") -> tuple[Command | None, str]:
        """``(command, text)`` of an utterance; an unrecognised one is counted, logged and gives None."""
        if isinstance(utterance, Command):
            cmd, text = utterance, utterance.instruction
        elif isinstance(utterance, str):
            cmd, text = parse(utterance), utterance
        elif hasattr(utterance, "command") and hasattr(utterance, "text"):
            cmd, text = utterance.command, str(utterance.text)
        else:
            raise TypeError(f"a correction is text, a Command or a Recognition, not {type(utterance).__name__}")
        if cmd is None:
            self.unrecognised += 1
            self.event("unrecognised", text, "", source)
            LOG.info("not understood, nothing changes: %r (%s)", text, source)
        return cmd, text

    def apply(self, cmd: Command, text: str, source: str, hold: int | None = None) -> Command:
        """Put a recognised command in force (``hold``: ticks, default ``hold_steps``)."""
        if cmd.kind == "stop":
            self.stopped = True
            self._active = None
            self.event("stop", text, cmd.instruction, source)
            self._queue_log(cmd, text, source)
            LOG.warning("stop (%s): holding still", source)
            return cmd
        if cmd.kind == "speed":
            self.speed = float(np.clip(self.speed * float(cmd.parameters["scale"]), MIN_SPEED, 1.0))
            self.event("speed", text, cmd.instruction, source)
            self._queue_log(cmd, text, source)
            return cmd
        if self.stopped:
            self.stopped = False
            self.event("resumed", text, cmd.instruction, source)
        self._active = _Active(cmd, self.hold_steps if hold is None else max(1, int(hold)), text, source)
        self.corrections += 1
        self.event("correction", text, cmd.instruction, source)
        self._queue_log(cmd, text, source)
        self._active.group = self._group
        LOG.info("correction (%s): %r -> %s", source, text, cmd.instruction)
        return cmd

    def correct(self, utterance: Any, source: str = "typed") -> Command | None:
        """:meth:`understand` then :meth:`apply`; None when nothing changed."""
        cmd, text = self.understand(utterance, source)
        return None if cmd is None else self.apply(cmd, text, source)

    def resume(self) -> None:
        """Leave the stopped state; the planner decides again."""
        if self.stopped:
            self.stopped = False
            self.event("resumed", "", "", "api")

    def release(self, why: str) -> None:
        if self._active is not None:
            self.event("released", why, self._active.command.instruction, "hierarchy")
        self._active = None

    # --- the tick ---------------------------------------------------------------------------------

    def tick(self, obs: Mapping[str, Any]) -> tuple[str, str]:
        """The planner sees ``obs``; returns ``(instruction, source)`` for this tick."""
        if self.log is not None:
            self._history.append({k: np.asarray(obs[k], np.float32).reshape(-1) for k in self.log.obs_keys})
        self.planned = self.planner.next(obs)
        self.step += 1
        act = self._active
        if act is not None and not self.stopped:
            if self.planned == act.command.instruction:
                act.agreed = True
            elif act.agreed:  # the planner caught up, then moved on: the segment changed
                self.release("segment changed")
        self._write_log()  # this tick's observations, labelled with the correction in force (if any)
        act = self._active
        if self.stopped:
            instruction, source = "stop", "stop"
        elif act is not None:
            instruction, source = act.command.instruction, "correction"
            act.left -= 1
            if act.left <= 0:
                self.release("held long enough")
        else:
            instruction, source = self.planned, "planner"
        self.instruction, self.source = instruction, source
        if self._window is not None:
            self._recent.append((self._window, instruction, source))
        return instruction, source

    # --- the corrections log ----------------------------------------------------------------------

    def _queue_log(self, cmd: Command, text: str, source: str) -> None:
        """Queue a log entry for ``cmd``; the next :meth:`tick` writes it with the observation history
        it acts on (and one more for every later tick a held correction stays in force)."""
        self._group += 1
        if self.log is not None:
            self._pending.append((cmd, text, source, self._group))

    def _write_log(self) -> None:
        if self.log is None:
            return
        hist = list(self._history)
        hist = [hist[0]] * (self._history.maxlen - len(hist)) + hist
        obs = {k: np.stack([h[k] for h in hist]) for k in self.log.obs_keys}
        self._window = obs
        fresh = list(self._pending)
        self._pending.clear()
        a = self._active
        held = []
        if a is not None and a.group not in {g for *_, g in fresh}:
            a.logged += 1
            if self.log_ticks is None or a.logged <= self.log_ticks:
                held.append((a.command, a.text, a.source, a.group))
        elif a is not None:
            a.logged += 1
        for cmd, text, source, group in fresh:
            wrong = self.instruction  # what the robot did on the tick before the correction
            if self.backdate > 0 and cmd.kind not in ("stop", "speed") and wrong != cmd.instruction:
                back = []
                for old, did, src in reversed(self._recent):  # the planner's run of that same mistake
                    if did != wrong or src != "planner":
                        break
                    back.insert(0, old)
                back = back[-self.backdate:]
                for i, old in enumerate(back):
                    self.log.append(CorrectionEntry(old, cmd.instruction, wrong, cmd.kind, text, source, self.episode,
                                                    self.step - len(back) + i, group=group))
        for cmd, text, source, group in (*fresh, *held):
            self.log.append(CorrectionEntry(obs, cmd.instruction, self.planned, cmd.kind, text, source, self.episode,
                                            self.step, group=group))


class Hierarchy:
    """Planner + corrections + language-conditioned low-level policy (see the module docstring).

    Args:
        planner: has ``reset()`` and ``next(obs) -> instruction`` (a
            :class:`~serl_ctrl.language.planner.PlannerRunner`, or an
            :class:`~serl_ctrl.language.scripted_human.ExpertPlanner`).
        policy: a runtime policy (``serl_ctrl.runtime.Policy``: ``spec``, ``reset``, ``act``,
            ``flush``) whose observations include ``instruction_embedding``.
        table: instruction -> embedding (default: MiniLM, built on first use).
        hold_steps, log, log_ticks, backdate: see :class:`InstructionArbiter`.
        known_instructions: what the policy was trained on (default: read from its metadata; None
            there means every instruction goes to the policy).
        pos_step: metres per unit action (the env's), for direct motions.
        gripper_steps: ticks a direct gripper command lasts.
    """

    def __init__(self, planner: Any, policy: Any, *, table: InstructionTable | None = None, hold_steps: int = 10,
                 log: CorrectionLog | None = None, known_instructions: Sequence[str] | None = None,
                 pos_step: float = 0.03, gripper_steps: int = 2, log_ticks: int | None = 3,
                 backdate: int = 2) -> None:
        spec = policy.spec
        if INSTRUCTION_KEY not in spec.obs:
            raise ValueError(f"the low-level policy takes {sorted(spec.obs)}; a language-conditioned policy "
                             f"takes {INSTRUCTION_KEY!r} too (train it with `serl-ctrl train --language`)")
        self.arbiter = InstructionArbiter(planner, hold_steps=hold_steps, log=log, log_ticks=log_ticks,
                                          backdate=backdate)
        self.policy = policy
        self.table = table or InstructionTable()
        known = known_instructions if known_instructions is not None else low_level_instructions(policy)
        self.known = set(known) if known is not None else None
        self.pos_step = float(pos_step)
        self.gripper_steps = int(gripper_steps)
        self.action_dim = int(spec.action_dim)
        self._policy_keys = [k for k in spec.obs if k != INSTRUCTION_KEY]
        self.reset()

    # --- state (mostly the arbiter's) -------------------------------------------------------------

    def reset(self, episode: int | None = None) -> None:
        """Start an episode: planner and policy reset, no correction active, full speed."""
        self.arbiter.reset(episode)
        self.policy.reset()
        self._direct: deque[np.ndarray] = deque()
        self._executed = ""
        self._gripper = -1.0  # the env starts with the gripper open

    events = property(lambda self: self.arbiter.events)
    instruction = property(lambda self: self.arbiter.instruction, doc="the instruction of the last tick")
    source = property(lambda self: self.arbiter.source, doc="planner, correction or stop")
    planned = property(lambda self: self.arbiter.planned, doc="what the planner chose on the last tick")
    stopped = property(lambda self: self.arbiter.stopped)
    speed = property(lambda self: self.arbiter.speed)
    correction = property(lambda self: self.arbiter.correction)
    corrections = property(lambda self: self.arbiter.corrections)
    unrecognised = property(lambda self: self.arbiter.unrecognised)
    episode = property(lambda self: self.arbiter.episode)
    step = property(lambda self: self.arbiter.step)
    log = property(lambda self: self.arbiter.log)

    # --- corrections ------------------------------------------------------------------------------

    def correct(self, utterance: Any, source: str = "typed") -> Command | None:
        """Apply a correction: free text (parsed against the vocabulary), a
        :class:`~serl_ctrl.language.vocabulary.Command`, or a speech
        :class:`~serl_ctrl.language.speech.Recognition`. Returns the command applied, or None when
        nothing changed (not understood, or a skill the low-level policy was not trained on)."""
        cmd, text = self.arbiter.understand(utterance, source)
        if cmd is None:
            return None
        direct = self.known is not None and cmd.kind in ("translate", "gripper", "skill") \
            and cmd.instruction not in self.known
        if direct and cmd.kind == "skill":
            self.arbiter.event("ignored", text, cmd.instruction, source)
            LOG.warning("ignored %r (%s): the low-level policy was not trained on it", cmd.instruction, source)
            return None
        self._direct.clear()
        if cmd.kind == "stop":
            self.policy.reset()  # queue and history: motion resumes from fresh observations
        elif direct:
            self._direct.extend(self._direct_actions(cmd))
        self.arbiter.apply(cmd, text, source, hold=len(self._direct) if direct else None)
        return cmd

    def resume(self) -> None:
        """Leave the stopped state; the planner decides again."""
        self.arbiter.resume()

    def _direct_tick(self, cmd: Command, fraction: float = 1.0) -> np.ndarray:
        """One tick of an instruction the policy was not trained on: a Cartesian step (``fraction``
        of a full 1-unit action along the direction) or a gripper command, the rest held."""
        a = np.zeros(self.action_dim, np.float32)
        a[-1] = self._gripper
        if cmd.kind == "translate":
            a[:3] = np.asarray(cmd.parameters["direction"], np.float32) * min(1.0, fraction) * self.speed
        elif cmd.kind == "gripper":
            a[-1] = 1.0 if cmd.parameters.get("action") == "close" else -1.0
        return a

    def _direct_actions(self, cmd: Command) -> list[np.ndarray]:
        if cmd.kind == "translate":
            m = float(cmd.parameters["magnitude_m"])
            n = max(1, math.ceil(m / self.pos_step - 1e-9))
            return [self._direct_tick(cmd, m / n / self.pos_step) for _ in range(n)]
        if cmd.kind == "gripper":
            return [self._direct_tick(cmd) for _ in range(self.gripper_steps)]
        return []

    # --- the control tick -------------------------------------------------------------------------

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One tick: the action for observation ``obs`` (see the module docstring)."""
        instruction, source = self.arbiter.tick(obs)
        if source == "stop":
            self._executed = "stop"
            a = np.zeros(self.action_dim, np.float32)
            a[-1] = self._gripper  # hold the gripper as it is: a held object stays held
            return a
        if source == "correction" and self._direct:
            a = self._direct.popleft()
            self._executed = instruction
            self._gripper = float(a[-1])
            return a
        self._direct.clear()
        if instruction != self._executed:
            self.policy.flush()  # a new instruction acts now, not after the rest of a chunk
        self._executed = instruction
        if self.known is not None and instruction not in self.known:
            # the planner chose something the policy never learned (a correction taught it): one direct tick
            cmd = parse(instruction)
            if cmd is not None and cmd.kind in ("translate", "gripper"):
                a = self._direct_tick(cmd, float(cmd.parameters.get("magnitude_m", 0.0)) / self.pos_step)
                self._gripper = float(a[-1])
                return a
        pobs = {k: obs[k] for k in self._policy_keys}
        pobs[INSTRUCTION_KEY] = self.table(instruction)
        a = np.array(self.policy.act(pobs), dtype=np.float32, copy=True)
        a[:3] *= self.speed
        self._gripper = float(a[-1])
        return a


# =============================================================================================
# Running it in simulation


@dataclass(frozen=True)
class Injection:
    """A correction given at a fixed step of every episode: ``utterance`` is text, a Command or a
    Recognition (e.g. a WAV file recognised beforehand)."""

    step: int
    utterance: Any
    source: str = "wav"


def run_episodes(env: Any, hierarchy: Hierarchy, episodes: int, seed: int = 0, *, human: Any = None,
                 speech: Any = None, injections: Iterable[Injection] = (), typed: "queue.Queue[str] | None" = None,
                 real_time: bool = False, max_steps: int | None = None, progress: Callable | None = None,
                 perturb: Callable[[Any, int, np.random.Generator], bool] | None = None,
                 on_step: Callable[[int, int, Any], None] | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes of ``hierarchy`` in ``env`` (episode ``i`` reset with ``seed + i``).

    Args:
        human: a :class:`~serl_ctrl.language.scripted_human.ScriptedHuman` watching every step.
        speech: a :class:`~serl_ctrl.language.scripted_human.SpokenChannel`: the human's words
            are spoken and recognised before they reach the hierarchy (None: typed, exact).
        injections: corrections given at fixed steps of every episode.
        typed: a queue of lines a person types (read before every tick).
        real_time: pace ticks at the env's control rate (for people typing).
        perturb: ``perturb(env, step, rng)`` before every step (e.g.
            :class:`~serl_ctrl.envs.perturb.ObjectJump`); ``rng`` is seeded per episode.
        on_step: ``on_step(episode, step, hierarchy)`` after every tick.

    Returns the success rate, corrections per episode, per-episode records and the events.
    """
    base = env.unwrapped
    limit = max_steps or env.spec.max_episode_steps
    period = 1.0 / float(getattr(base, "control_hz", 10.0))
    injections = sorted(injections, key=lambda i: i.step)
    bar = progress(total=episodes, desc="hierarchy") if progress else None
    records = []
    n_events = len(hierarchy.events)
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            hierarchy.reset(episode=i)
            if human is not None:
                human.reset()
            success, steps, stopped_steps, perturbed = False, 0, 0, False
            agree = 0
            prng = np.random.default_rng([seed + i, 2])
            for steps in range(1, limit + 1):
                t0 = time.monotonic()
                if perturb is not None:  # the planner and policy see the moved object in the next observation
                    perturbed = bool(perturb(env, steps - 1, prng)) or perturbed
                for inj in injections:
                    if inj.step == steps - 1:
                        hierarchy.correct(inj.utterance, inj.source)
                while typed is not None and not typed.empty():
                    hierarchy.correct(typed.get_nowait(), "typed")
                action = hierarchy.act(obs)
                stopped_steps += hierarchy.stopped
                obs, _, terminated, truncated, info = env.step(action)
                success = success or bool(info.get("success"))
                if human is not None:
                    said = human.watch(base.task_state(), hierarchy.instruction, success)
                    agree += hierarchy.instruction == human.last_label
                    if said is not None:
                        hierarchy.correct(speech.hear(said) if speech is not None else said,
                                          "speech" if speech is not None else "scripted")
                if on_step is not None:
                    on_step(i, steps, hierarchy)
                if terminated or truncated:
                    break
                if real_time:
                    time.sleep(max(0.0, period - (time.monotonic() - t0)))
            records.append({"seed": seed + i, "success": success, "steps": steps,
                            "corrections": hierarchy.corrections, "unrecognised": hierarchy.unrecognised,
                            "stopped_steps": stopped_steps, "perturbed": perturbed,
                            **({"expert_agreement": agree / max(steps, 1)} if human is not None else {})})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([r['success'] for r in records]):.0%}")
    finally:
        if bar is not None:
            bar.close()
    out = {
        "episodes": episodes,
        "successes": int(sum(r["success"] for r in records)),
        "success_rate": float(np.mean([r["success"] for r in records])) if records else 0.0,
        "mean_steps": float(np.mean([r["steps"] for r in records])) if records else 0.0,
        "corrections": int(sum(r["corrections"] for r in records)),
        "corrections_per_episode": float(np.mean([r["corrections"] for r in records])) if records else 0.0,
        "unrecognised": int(sum(r["unrecognised"] for r in records)),
        "records": records,
        "events": [e.__dict__ for e in hierarchy.events[n_events:]],
    }
    if human is not None and records:
        out["expert_agreement"] = float(np.mean([r["expert_agreement"] for r in records]))
    return out


def expert_instruction_success(policy: Any, task: str, backend: str = "mujoco", episodes: int = 20,
                               seed: int = 10_000, progress: Callable | None = None) -> dict[str, Any]:
    """Success of a language-conditioned low-level ``policy`` (a runtime Policy) when the task's
    scripted expert names the instructions (the upper bound of any planner): what ``serl-ctrl train
    --language`` reports and writes on the model card."""
    from ..envs import make_env
    from .scripted_human import ExpertPlanner

    env = make_env(task, backend=backend, obs="state")
    try:
        h = Hierarchy(ExpertPlanner(env), policy, pos_step=float(getattr(env.unwrapped, "pos_step", 0.03)))
        infer: list[float] = []
        r = run_episodes(env, h, episodes, seed, progress=progress,
                         on_step=lambda i, s, hh: infer.append(getattr(policy, "last_infer_ms", None) or 0.0))
    finally:
        env.close()
    r["infer_ms_p50"] = float(np.percentile(infer, 50)) if infer else None
    return r
