"""The correction vocabulary and its parser (serl_ctrl.language.vocabulary)."""

from __future__ import annotations

import json

import pytest

from serl_ctrl.language import vocabulary as V
from serl_ctrl.language.vocabulary import COMMANDS, DEMO_LABELS, INSTRUCTIONS, Command, parse


def test_vocabulary_size_and_demo_labels_are_canonical():
    assert len(INSTRUCTIONS) >= 15
    assert len(set(INSTRUCTIONS)) == len(INSTRUCTIONS)
    for label in ("move above the cube", "go down", "close the gripper", "lift", "move a bit to the left",
                  "push the block to the target", "reach the target", "move above the hole",
                  "insert the peg", "open the gripper"):
        assert label in INSTRUCTIONS
    assert set(DEMO_LABELS) <= set(INSTRUCTIONS)


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_every_canonical_instruction_parses_to_itself(instruction):
    cmd = parse(instruction)
    assert cmd is not None and cmd.instruction == instruction
    assert cmd == COMMANDS[instruction]
    assert cmd.instruction_id == INSTRUCTIONS.index(instruction)


@pytest.mark.parametrize("text, instruction, delta", [
    ("move a bit to the left", "move a bit to the left", (0, 0.02, 0)),
    ("move a bit to the right", "move a bit to the right", (0, -0.02, 0)),
    ("move a bit forward", "move a bit forward", (0.02, 0, 0)),
    ("move a bit back", "move a bit back", (-0.02, 0, 0)),
    ("go down", "go down", (0, 0, -0.05)),
    ("go up", "go up", (0, 0, 0.05)),
    ("a little higher", "a little higher", (0, 0, 0.02)),
    ("a little lower", "a little lower", (0, 0, -0.02)),
    ("Move LEFT!", "move to the left", (0, 0.05, 0)),
    ("raise", "go up", (0, 0, 0.05)),
    ("Um, could you please move a little bit to the left?", "move a bit to the left", (0, 0.02, 0)),
    ("slightly forward", "move a bit forward", (0.02, 0, 0)),
    ("back up a little", "move a bit back", (-0.02, 0, 0)),
    ("descend", "go down", (0, 0, -0.05)),
    ("move 3 cm up", "a little higher", (0, 0, 0.03)),
    ("go 8 centimetres to the right", "move to the right", (0, -0.08, 0)),
    ("move 50 cm left", "move to the left", (0, 0.10, 0)),  # clipped to MAX_STEP_M
])
def test_translations_are_in_the_base_frame_in_metres(text, instruction, delta):
    cmd = parse(text)
    assert cmd is not None and cmd.kind == "translate"
    assert cmd.instruction == instruction
    assert cmd.delta_m == pytest.approx(delta)
    d = cmd.parameters["direction"]
    assert sum(x * x for x in d) == pytest.approx(1.0)


def test_magnitudes():
    assert V.SMALL_STEP_M == pytest.approx(0.02)
    assert V.STEP_M == pytest.approx(0.05)
    assert parse("a bit to the left").parameters["magnitude_m"] == pytest.approx(0.02)
    assert parse("a little to the left").parameters["magnitude_m"] == pytest.approx(0.02)
    assert parse("to the left").parameters["magnitude_m"] == pytest.approx(0.05)


@pytest.mark.parametrize("text, action", [
    ("open the gripper", "open"), ("Release!", "open"), ("let go", "open"), ("drop it", "open"),
    ("close the gripper", "close"), ("grab it", "close"), ("grasp the cube", "close"),
    ("please close your hand", "close"),
])
def test_gripper(text, action):
    cmd = parse(text)
    assert cmd.kind == "gripper" and cmd.parameters["action"] == action
    assert cmd.instruction == f"{action} the gripper"


@pytest.mark.parametrize("text, instruction", [
    ("lift", "lift"), ("pick it up", "lift"), ("put it on the target", "put it on the target"),
    ("place it on the goal", "put it on the target"), ("move above the cube", "move above the cube"),
    ("hover over the block", "move above the cube"), ("push the block to the target", "push the block to the target"),
    ("reach the target", "reach the target"), ("go to the target", "reach the target"),
    ("move above the hole", "move above the hole"), ("insert the peg", "insert the peg"),
    ("put the peg in the hole", "insert the peg"), ("slow down", "slow down"), ("go faster", "speed up"),
])
def test_skills_and_speed(text, instruction):
    assert parse(text).instruction == instruction


@pytest.mark.parametrize("text", [
    "stop", "STOP!", "open the gripper... no, stop!", "move left and stop", "halt", "freeze",
    "don't stop", "stop, move a bit to the left",
])
def test_stop_anywhere_wins(text):
    assert parse(text).kind == "stop"


@pytest.mark.parametrize("text", [
    "", "   ", "sing a song", "what time is it", "hello robot", "move up and to the left",
    "don't open the gripper", "do not move left", "open and close the gripper", "go faster and slower",
    "push it", "?!", "um uh",
])
def test_not_understood_is_none(text):
    assert parse(text) is None


def test_text_is_never_evaluated(monkeypatch):
    import builtins

    def forbidden(*a, **k):
        raise AssertionError("parse() must never evaluate text")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    # Code-like text is just words; these contain none of the vocabulary.
    assert parse("__import__('os').system('echo hi')") is None
    assert parse("rm -rf / ; shutdown now") is None
    for s in INSTRUCTIONS:
        assert parse(s) is not None
    with pytest.raises(TypeError):
        parse(b"stop")  # type: ignore[arg-type]


def test_command_dict_roundtrip_is_json():
    for s in INSTRUCTIONS:
        d = COMMANDS[s].to_dict()
        assert json.loads(json.dumps(d)) == d
        assert Command.from_dict(d) == COMMANDS[s]
    with pytest.raises(ValueError):
        Command.from_dict({"kind": "skill", "instruction": "dance", "parameters": {}})
    with pytest.raises(ValueError):
        V.instruction_id("dance")
