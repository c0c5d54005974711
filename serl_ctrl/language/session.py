"""``serl-ctrl run --planner``: the language hierarchy in simulation, with typed, spoken, scripted or
recorded corrections, as one function (:func:`run_session`) the command line calls.

Correction sources (``corrections``, any number of them):

``none``             the hierarchy alone
``scripted``         the scripted human (:class:`~serl_ctrl.language.scripted_human.ScriptedHuman`)
                     types its corrections
``spoken``           the scripted human speaks them: espeak-ng -> WAV -> the offline recogniser
``typed``            a person types corrections on stdin, one per line (ticks paced in real time)
``wav:FILE[@STEP]``  a recorded utterance, recognised once, given at step STEP (default 0) of every
                     episode
``text:WORDS@STEP``  typed words given at step STEP of every episode (scripts and tests)

The planner is a file written by ``serl-ctrl train-planner`` / ``finetune-planner``, or ``expert``
(the task's scripted expert: the low-level policy's upper bound). ``perturb="jump"`` moves the cube
5-7 cm away as the gripper starts down on it (:class:`~serl_ctrl.envs.perturb.ObjectJump`).
"""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["run_session", "parse_corrections", "make_perturbation", "PERTURBATIONS", "JUMP_ABOVE"]

PERTURBATIONS = ("none", "jump")
#: Height band (m above the cube) in which ``perturb="jump"`` moves it: as the gripper starts down.
JUMP_ABOVE = (0.05, 0.10)


def make_perturbation(name: str | None):
    """``None``/``"none"`` or ``"jump"`` -> a perturbation callable (or None)."""
    if name in (None, "", "none"):
        return None
    if name == "jump":
        from ..envs.perturb import ObjectJump

        return ObjectJump(above=JUMP_ABOVE)
    raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}")


def parse_corrections(values: Sequence[str] | None) -> dict[str, Any]:
    """Check and sort the ``--corrections`` values: ``{"human": None|"scripted"|"spoken",
    "typed": bool, "wav": [(path, step)], "text": [(words, step)]}``."""
    out: dict[str, Any] = {"human": None, "typed": False, "wav": [], "text": []}
    for v in values or []:
        if v == "none":
            continue
        if v in ("scripted", "spoken"):
            if out["human"] not in (None, v):
                raise ValueError("--corrections scripted and spoken exclude each other (one scripted human)")
            out["human"] = v
        elif v == "typed":
            out["typed"] = True
        elif v.startswith(("wav:", "text:")):
            kind, _, rest = v.partition(":")
            body, at, step = rest.rpartition("@") if "@" in rest else (rest, "", "0")
            if not body or (at and not step.isdigit()):
                raise ValueError(f"--corrections {v!r}: write {kind}:{'FILE' if kind == 'wav' else 'WORDS'}@STEP "
                                 "(STEP: a control step, 0 or more)")
            if kind == "wav" and not Path(body).is_file():
                raise FileNotFoundError(f"--corrections {v!r}: no such WAV file: {body}")
            out[kind].append((body, int(step)))
        else:
            raise ValueError(f"--corrections {v!r}: use none, scripted, spoken, typed, wav:FILE[@STEP] or "
                             "text:WORDS@STEP")
    return out


def _stdin_queue() -> "queue.Queue[str]":
    q: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            line = line.strip()
            if line:
                q.put(line)

    threading.Thread(target=read, daemon=True, name="typed-corrections").start()
    return q


def run_session(planner: str, policy: str, task: str = "pickcube", *, backend: str = "mujoco", episodes: int = 10,
                seed: int = 0, corrections: Sequence[str] | None = None, log: str | Path | None = None,
                hold_steps: int = 10, perturb: str | None = None, real_time: bool | None = None,
                phrasing: str = "canonical", dwell: int = 1, progress: Callable | None = None) -> dict[str, Any]:
    """Run the hierarchy for ``episodes`` episodes (seeds ``seed``, ``seed + 1`` ...); returns the
    success rate, corrections and, with ``log``, where the corrections log was written (.npz)."""
    from ..envs import make_env
    from .corrections import CorrectionLog
    from .hierarchy import Hierarchy, Injection, load_low_level, run_episodes
    from .planner import Planner, PlannerRunner
    from .scripted_human import ExpertPlanner, ScriptedHuman, SpokenChannel

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    spec = parse_corrections(corrections)
    low = load_low_level(policy)
    env = make_env(task, backend=backend, obs="state")
    try:
        if planner == "expert":
            source: Any = ExpertPlanner(env)
            planner_keys = tuple(k for k in low.spec.obs if k != "instruction_embedding")
            history = 1
        else:
            model = Planner.load(planner)
            source = PlannerRunner(model, dwell=dwell)
            planner_keys, history = model.obs_keys, model.n_obs_steps
        corr_log = None
        if log is not None:
            corr_log = CorrectionLog(planner_keys, history, {"task": task, "planner": str(planner),
                                                             "policy": str(policy), "seed": seed})
        pos_step = float(getattr(env.unwrapped, "pos_step", 0.03))
        h = Hierarchy(source, low, hold_steps=hold_steps, log=corr_log, pos_step=pos_step)
        human = speech = None
        if spec["human"] is not None:
            human = ScriptedHuman(env.unwrapped.task, phrasing=phrasing, seed=seed)
            if spec["human"] == "spoken":
                speech = SpokenChannel()
        injections = [Injection(step, words, "text") for words, step in spec["text"]]
        if spec["wav"]:
            from .speech import Recognizer

            rec = speech.recognizer if speech is not None else Recognizer()
            injections += [Injection(step, rec.recognize_file(path), "wav") for path, step in spec["wav"]]
        typed = _stdin_queue() if spec["typed"] else None
        pace = spec["typed"] if real_time is None else bool(real_time)
        result = run_episodes(env, h, episodes, seed, human=human, speech=speech, injections=injections,
                              typed=typed, real_time=pace, perturb=make_perturbation(perturb), progress=progress)
    finally:
        env.close()
    result.update(task=task, backend=backend, planner=str(planner), policy=str(policy), perturb=perturb or "none",
                  corrections_sources=[c for c in (corrections or ["none"])], hold_steps=hold_steps)
    if corr_log is not None:
        result["log"] = str(corr_log.save(log))
        result["log_summary"] = corr_log.summary()
    return result
