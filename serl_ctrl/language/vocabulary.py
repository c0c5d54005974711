"""The instruction and correction vocabulary, and a tolerant parser for it.

Every command the robot understands by language has one *canonical instruction* string
(:data:`INSTRUCTIONS`). Those strings are what language-conditioned policies are trained on and
what the scripted demonstrations label their segments with, so they never change spelling;
add new ones at the end (the position in :data:`INSTRUCTIONS` is the instruction id used by
:func:`serl_ctrl.language.embedding.embed_instruction`).

:func:`parse` maps free text (a transcript, a typed correction) onto a :class:`Command`:

>>> parse("Um, could you move a little bit to the left please?").instruction
'move a bit to the left'
>>> parse("raise").parameters["direction"]
[0.0, 0.0, 1.0]
>>> parse("open the gripper... no, stop!").kind
'stop'
>>> parse("sing a song") is None
True

Rules, in order:

1. ``stop`` (also "halt", "freeze") anywhere in the utterance wins: safety first, whatever else
   was said.
2. A negated utterance ("don't open the gripper") is not understood: ``None``.
3. Direct matches of the canonical strings and their synonyms, then a small structured parser
   for relative motions ("move 3 cm up", "go a bit further left"), gripper, speed and skills.
4. Anything else, or anything ambiguous (two directions on one axis, open *and* close), is
   ``None``: unrecognised speech changes nothing.

Text is only ever matched against word lists; it is never executed or evaluated.

Frames and units: directions are unit vectors in the robot *base* frame, x forward (away from
the robot base), y left, z up; magnitudes are in metres. "a bit" / "a little" = 2 cm, plain =
5 cm; spoken distances ("3 centimetres") are accepted and clipped to
:data:`MAX_STEP_M`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "Command",
    "INSTRUCTIONS",
    "COMMANDS",
    "DEMO_LABELS",
    "SMALL_STEP_M",
    "STEP_M",
    "MAX_STEP_M",
    "parse",
    "normalize",
    "instruction_id",
    "command_for",
]

#: "a bit", "a little", "slightly": 2 cm.
SMALL_STEP_M = 0.02
#: a plain relative motion ("go down"): 5 cm.
STEP_M = 0.05
#: A spoken distance is clipped to this (a correction is a nudge, not a trajectory).
MAX_STEP_M = 0.10

_LEFT = (0.0, 1.0, 0.0)
_RIGHT = (0.0, -1.0, 0.0)
_FORWARD = (1.0, 0.0, 0.0)
_BACK = (-1.0, 0.0, 0.0)
_UP = (0.0, 0.0, 1.0)
_DOWN = (0.0, 0.0, -1.0)


@dataclass(frozen=True)
class Command:
    """One understood instruction or correction.

    Attributes:
        kind: ``"translate"`` (relative Cartesian motion), ``"gripper"``, ``"stop"``,
            ``"speed"`` (scale the commanded velocity) or ``"skill"`` (a task-level instruction
            for the language-conditioned policy).
        instruction: the canonical instruction string (one of :data:`INSTRUCTIONS`) that a
            language-conditioned policy is conditioned on.
        parameters: JSON-able parameters. ``translate``: ``direction`` (unit vector, base frame,
            x forward / y left / z up) and ``magnitude_m``; ``gripper``: ``action`` ``"open"`` or
            ``"close"``; ``speed``: ``scale`` (multiplier on the speed limit); ``stop`` and
            ``skill``: none.
    """

    kind: str
    instruction: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def instruction_id(self) -> int:
        """Index of :attr:`instruction` in :data:`INSTRUCTIONS`."""
        return INSTRUCTIONS.index(self.instruction)

    @property
    def delta_m(self) -> tuple[float, float, float] | None:
        """Translation in metres (base frame) for ``translate`` commands, else ``None``."""
        if self.kind != "translate":
            return None
        d = self.parameters["direction"]
        m = float(self.parameters["magnitude_m"])
        return (d[0] * m, d[1] * m, d[2] * m)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``json.dumps`` works on it)."""
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.parameters.items()}
        return {"kind": self.kind, "instruction": self.instruction, "parameters": params}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Command":
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` for an unknown instruction."""
        if d["instruction"] not in INSTRUCTIONS:
            raise ValueError(f"unknown instruction {d['instruction']!r}; known: {INSTRUCTIONS}")
        return cls(kind=str(d["kind"]), instruction=str(d["instruction"]),
                   parameters=dict(d.get("parameters", {})))


def _translate(instruction: str, direction, magnitude: float) -> Command:
    return Command("translate", instruction,
                   {"direction": list(direction), "magnitude_m": float(magnitude)})


#: Canonical instruction -> Command. Order is the instruction id: append only.
COMMANDS: dict[str, Command] = {}


def _add(cmd: Command) -> None:
    COMMANDS[cmd.instruction] = cmd


# Small relative motions (2 cm).
_add(_translate("move a bit to the left", _LEFT, SMALL_STEP_M))
_add(_translate("move a bit to the right", _RIGHT, SMALL_STEP_M))
_add(_translate("move a bit forward", _FORWARD, SMALL_STEP_M))
_add(_translate("move a bit back", _BACK, SMALL_STEP_M))
_add(_translate("a little higher", _UP, SMALL_STEP_M))
_add(_translate("a little lower", _DOWN, SMALL_STEP_M))
# Plain relative motions (5 cm).
_add(_translate("move to the left", _LEFT, STEP_M))
_add(_translate("move to the right", _RIGHT, STEP_M))
_add(_translate("move forward", _FORWARD, STEP_M))
_add(_translate("move back", _BACK, STEP_M))
_add(_translate("go up", _UP, STEP_M))
_add(_translate("go down", _DOWN, STEP_M))
# Gripper.
_add(Command("gripper", "open the gripper", {"action": "open"}))
_add(Command("gripper", "close the gripper", {"action": "close"}))
# Task-level skills (what the scripted demonstrations label their segments with).
for _s in ("lift", "move above the cube", "put it on the target", "push the block to the target",
           "reach the target", "move above the hole", "insert the peg"):
    _add(Command("skill", _s))
# Safety and speed.
_add(Command("stop", "stop"))
_add(Command("speed", "slow down", {"scale": 0.5}))
_add(Command("speed", "speed up", {"scale": 2.0}))

#: All canonical instruction strings; the index is the instruction id.
INSTRUCTIONS: list[str] = list(COMMANDS)

#: Labels the scripted demonstrations use (all are canonical instructions).
DEMO_LABELS: tuple[str, ...] = (
    "move above the cube", "go down", "close the gripper", "lift", "move a bit to the left",
    "push the block to the target", "reach the target", "move above the hole", "insert the peg",
    "open the gripper",
)
assert all(s in COMMANDS for s in DEMO_LABELS)


def instruction_id(instruction: str) -> int:
    """Id of a canonical instruction; ``ValueError`` with the known list otherwise."""
    try:
        return INSTRUCTIONS.index(instruction)
    except ValueError:
        raise ValueError(f"{instruction!r} is not a canonical instruction; known: {INSTRUCTIONS}") from None


def command_for(instruction: str) -> Command:
    """The :class:`Command` of a canonical instruction (``KeyError`` if unknown)."""
    return COMMANDS[instruction]


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

# Multi-word rewrites applied to the normalised text, before filler removal. Keys are matched as
# whole words. They map spoken variants onto the words the rules below look for.
_PHRASE_REWRITES: tuple[tuple[str, str], ...] = (
    (r"\bdon't\b|\bdont\b|\bdo not\b|\bdoesn't\b|\bnever\b|\bno longer\b", " NOT "),
    (r"\ba (?:little|tiny|wee|small) (?:bit|touch)\b", " SMALL "),
    (r"\ba (?:bit|little|tad|touch|smidge|hair|notch)\b", " SMALL "),
    (r"\b(?:slightly|little|bit|tiny|teeny|marginally|somewhat)\b", " SMALL "),
    (r"\blet go\b|\blet it go\b", " open "),
    (r"\bback up\b|\bback off\b|\bback away\b", " back "),
    (r"\bpick (?:it |the \w+ )?up\b", " lift "),
    (r"\bspeed up\b|\bfaster\b|\bhurry(?: up)?\b|\bgo quicker\b", " FASTER "),
    (r"\bslow down\b|\bslower\b|\bslow\b|\bcareful(?:ly)?\b|\bgently\b", " SLOWER "),
    (r"\bcentimet(?:er|re)s?\b|\bcm\b", " CM "),
    (r"\bmillimet(?:er|re)s?\b|\bmm\b", " MM "),
    (r"\binch(?:es)?\b", " INCH "),
    (r"\bon top of\b|\bover\b|\babove\b", " above "),
    (r"\btowards?\b|\bonto\b|\binto\b|\bon to\b", " to "),
)

_STOP_WORDS = {"stop", "halt", "freeze", "abort", "stopp"}

_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "left": _LEFT, "leftward": _LEFT, "leftwards": _LEFT,
    "right": _RIGHT, "rightward": _RIGHT, "rightwards": _RIGHT,
    "forward": _FORWARD, "forwards": _FORWARD, "ahead": _FORWARD, "front": _FORWARD,
    "away": _FORWARD,
    "back": _BACK, "backward": _BACK, "backwards": _BACK, "closer": _BACK,
    "up": _UP, "upward": _UP, "upwards": _UP, "higher": _UP, "raise": _UP, "rise": _UP,
    "ascend": _UP,
    "down": _DOWN, "downward": _DOWN, "downwards": _DOWN, "lower": _DOWN, "descend": _DOWN,
}

_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "half": 0.5,
}

_OPEN_WORDS = {"open", "release", "ungrip", "unclench", "loosen", "drop"}
_CLOSE_WORDS = {"close", "shut", "grasp", "grab", "grip", "clamp", "squeeze", "clench"}


def normalize(text: str) -> str:
    """Lower-case, ASCII apostrophes, punctuation to spaces, single spaces."""
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = re.sub(r"(\d+(?:\.\d+)?)\s*(cm|mm)\b", r"\1 \2", t)
    t = re.sub(r"[^a-z0-9.' ]+", " ", t)
    t = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", t)  # keep decimal points only
    t = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", t)
    return " ".join(t.split())


def _rewrite(norm: str) -> str:
    t = f" {norm} "
    for pattern, repl in _PHRASE_REWRITES:
        t = re.sub(pattern, repl, t)
    return " ".join(t.split())


def _direct_match(norm: str) -> Command | None:
    if norm in COMMANDS:
        return COMMANDS[norm]
    stripped = " ".join(w for w in norm.split() if w not in {"please", "robot", "now", "okay", "ok",
                                                              "um", "uh", "just", "hey"})
    return COMMANDS.get(stripped)


def _distance_m(words: list[str]) -> float | None:
    """A spoken distance ("3 CM", "two INCH", "half a CM"), in metres, if any."""
    for i, w in enumerate(words):
        if w in ("CM", "MM", "INCH") and i > 0:
            prev = words[i - 1]
            try:
                value = float(prev)
            except ValueError:
                if prev not in _NUMBERS:
                    continue
                value = float(_NUMBERS[prev])
            scale = {"CM": 0.01, "MM": 0.001, "INCH": 0.0254}[w]
            return value * scale
    return None


def _translation(words: list[str], small: bool) -> Command | None:
    dirs = [_DIRECTIONS[w] for w in words if w in _DIRECTIONS]
    if not dirs:
        return None
    uniq = set(dirs)
    if len(uniq) != 1:
        return None  # "left and up", "up ... down": ambiguous, do nothing
    d = dirs[0]
    dist = _distance_m(words)
    if dist is not None:
        if dist <= 0:
            return None
        magnitude = min(dist, MAX_STEP_M)
    else:
        magnitude = SMALL_STEP_M if small else STEP_M
    # Pick the canonical instruction of that direction and the nearest magnitude class.
    small_class = magnitude < (SMALL_STEP_M + STEP_M) / 2
    table = {
        (_LEFT, True): "move a bit to the left", (_LEFT, False): "move to the left",
        (_RIGHT, True): "move a bit to the right", (_RIGHT, False): "move to the right",
        (_FORWARD, True): "move a bit forward", (_FORWARD, False): "move forward",
        (_BACK, True): "move a bit back", (_BACK, False): "move back",
        (_UP, True): "a little higher", (_UP, False): "go up",
        (_DOWN, True): "a little lower", (_DOWN, False): "go down",
    }
    return _translate(table[(d, small_class)], d, magnitude)


def _skill(words: set[str]) -> Command | None:
    has = words.__contains__
    target = has("target") or has("goal")
    cube = has("cube") or has("block") or has("box") or has("object")
    hole = has("hole") or has("socket")
    if has("insert"):
        return COMMANDS["insert the peg"]
    if has("above") and hole:
        return COMMANDS["move above the hole"]
    if has("above") and cube:
        return COMMANDS["move above the cube"]
    if has("peg") and hole:
        return COMMANDS["insert the peg"]
    if has("push") or has("shove") or has("slide"):
        return COMMANDS["push the block to the target"] if (target or cube) else None
    if (has("put") or has("place") or has("set")) and target:
        return COMMANDS["put it on the target"]
    if target and (has("reach") or has("to") or has("touch") or has("get")):
        return COMMANDS["reach the target"]
    if has("reach") and not (cube or hole):
        return COMMANDS["reach the target"]
    if has("lift"):
        return COMMANDS["lift"]
    return None


def parse(text: str) -> Command | None:
    """Parse an utterance into a :class:`Command`, or ``None`` if it is not understood.

    Tolerant to case, punctuation, filler words ("um", "please", "robot" …) and synonyms
    ("raise" = "go up", "grab" = "close the gripper", "a tad" = "a bit" …). ``stop`` anywhere
    wins. Negated or ambiguous utterances give ``None``.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() wants a str, got {type(text).__name__}")
    norm = normalize(text)
    if not norm:
        return None
    raw_words = norm.split()
    if any(w in _STOP_WORDS for w in raw_words) or "stand still" in norm:
        return COMMANDS["stop"]
    direct = _direct_match(norm)
    if direct is not None:
        return direct
    rewritten = _rewrite(norm)
    words = rewritten.split()
    if "NOT" in words:
        return None
    wset = set(words)
    small = "SMALL" in wset

    # Speed.
    if "SLOWER" in wset or "FASTER" in wset:
        if "SLOWER" in wset and "FASTER" in wset:
            return None
        return COMMANDS["slow down" if "SLOWER" in wset else "speed up"]

    # Gripper ("open the gripper", "release", "grab it", "close your hand").
    opens = bool(wset & _OPEN_WORDS)
    closes = bool(wset & _CLOSE_WORDS)
    if opens or closes:
        if opens and closes:
            return None
        # "close" also means "near": "move closer" is handled as a direction, not here.
        return COMMANDS["open the gripper" if opens else "close the gripper"]

    skill = _skill(wset)
    if skill is not None:
        # "lift it up" / "lift it a bit" -> still the lift skill, but "lift" with an explicit
        # small magnitude reads better as a relative motion up.
        if skill.instruction == "lift" and small:
            return _translation(["up"], True)
        return skill

    return _translation(words, small)
