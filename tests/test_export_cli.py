"""serl-ctrl export: SAC runs and checkpoints, diffusion (graph or runtime sampler), consistency
steps, language-conditioned policies, --check, the model card, and bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from imitation_helpers import toy_episodes, write_toy_episodes
from serl_ctrl import cli
from serl_ctrl.agents.imitation import ChunkDataset, NamedInputs, policy_class, runtime_policy
from serl_ctrl.agents.imitation_run import deploy_spec
from serl_ctrl.export.onnx_export import export_onnx
from serl_ctrl.runtime import load_policy
from serl_ctrl.runtime.onnx_policy import OnnxPolicy, file_sha256
from serl_ctrl.runtime.sampler import ddim_chunk
from serl_ctrl.runtime.spec import (INSTRUCTION_DIM, INSTRUCTION_KEY, SAMPLE_INPUT, SCHEMA_VERSION, TIMESTEP_INPUT,
                                    PolicySpec)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"horizon": 8, "n_action_steps": 4, "n_obs_steps": 2}
TINY_SAMPLER = {**TINY, "denoiser": "mlp", "mlp_hidden": (32, 32), "time_embed_dim": 8}


def export(capsys, *args: str) -> tuple[int, dict]:
    """``serl-ctrl export ... --json`` in this process: exit code and the JSON result."""
    code = cli.main(["export", *args, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def save_policy(folder, algo: str, config: dict, episodes=None, demos=None):
    """An untrained (normalisers fitted) imitation policy saved as a run folder's model.*."""
    ds = ChunkDataset(episodes or toy_episodes(), n_obs_steps=config["n_obs_steps"], horizon=config["horizon"])
    policy = policy_class(algo).from_dataset(ds, config, seed=0, metadata={"demos": str(demos) if demos else None})
    policy.save(folder / "model")
    return policy


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demos")
    write_toy_episodes(folder, toy_episodes())
    return folder


def obs_at(seed: int) -> dict:
    return {"x": np.random.default_rng(seed).normal(size=2).astype(np.float32)}


# ----------------------------------------------------------------------------- SAC


def test_sac_run_exports_the_deterministic_actor_with_a_card(tmp_path, capsys):
    from serl_ctrl.agents.train_sac import RunConfig, train_sac
    from serl_ctrl.data.demos import record_demonstrations

    record_demonstrations("reach", tmp_path / "demos", n=1)
    small = ["sac.compile=false", "sac.hidden_dims=32,32", "sac.n_critics=2", "sac.utd=1", "sac.batch_size=16",
             "sac.learning_starts=10", "sac.random_steps=10"]
    cfg = RunConfig.load(None, {"task": "reach", "steps": 20, "eval_every": 20, "eval_episodes": 1,
                                "checkpoint_every": 20, "demos": str(tmp_path / "demos")}, small)
    train_sac(cfg, tmp_path / "run", export=False)
    out = tmp_path / "policies" / "reach_sac.onnx"
    code, result = export(capsys, str(tmp_path / "run"), "-o", str(out), "--check")
    assert code == 0, result
    assert result["max_abs_diff"] <= 1e-5 and result["recorded_samples"] > 1 and result["checked"]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == result["sha256"] == file_sha256(out) and card["algo"] == "sac"
    assert card["success_rate"] is not None and "ckpt_000000020" in card["success_source"]
    assert card["check"]["onnx_checker"] == "passed" and card["recorded_from"] == str(tmp_path / "demos")
    assert card["infer_ms_p50"] > 0 and not list(out.parent.glob("*.data"))
    policy = load_policy(out)
    assert policy.spec.task == "reach" and policy.spec.obs_mode == "state" and policy.spec.sampler is None
    # A checkpoint file exports the same function.
    code, again = export(capsys, str(next((tmp_path / "run" / "checkpoints").glob("*.safetensors"))),
                         "-o", str(tmp_path / "again.onnx"))
    assert code == 0
    obs = {k: np.random.default_rng(0).normal(size=f.shape).astype(np.float32) for k, f in policy.spec.obs.items()}
    np.testing.assert_array_equal(policy.act(obs), load_policy(tmp_path / "again.onnx").act(obs))


# ----------------------------------------------------------------------------- diffusion samplers


def test_runtime_sampler_gives_the_unrolled_graphs_chunk(tmp_path, capsys, demos):
    save_policy(tmp_path / "run", "diffusion", {**TINY_SAMPLER, "num_inference_steps": 10,
                                                "prediction_type": "sample"}, demos=demos)
    chunks = {}
    for sampler in ("graph", "runtime"):
        out = tmp_path / f"{sampler}.onnx"
        code, result = export(capsys, str(tmp_path / "run"), "-o", str(out), "--sampler", sampler, "--check")
        assert code == 0, result
        assert result["sampler"] == sampler and result["sampler_steps"] == 10 and result["max_abs_diff"] <= 1e-5
        assert result["recorded_samples"] == 16  # the run's demos, found through the policy's metadata
        policy = OnnxPolicy(out)
        chunks[sampler] = [policy.predict_chunk(obs_at(s)) for s in range(4)]
    np.testing.assert_allclose(chunks["runtime"], chunks["graph"], atol=1e-5)
    spec = OnnxPolicy(tmp_path / "runtime.onnx").spec
    assert spec.schema_version == SCHEMA_VERSION and spec.sampler.steps == 10 and spec.sampler.timesteps[0] == 99
    assert {i.name for i in OnnxPolicy(tmp_path / "runtime.onnx").session.get_inputs()} == {"x", SAMPLE_INPUT,
                                                                                             TIMESTEP_INPUT}
    # The robot side runs the NumPy sampler without torch or training code.
    code = ("import sys, numpy as np\n"
            "from serl_ctrl.runtime import load_policy\n"
            f"p = load_policy({str(tmp_path / 'runtime.onnx')!r})\n"
            "print(p.act({'x': np.zeros(2, np.float32)}).shape)\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('serl_ctrl.agents')]\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "(2,)" in run.stdout, run.stderr
    # --steps changes the unrolled step count.
    code, result = export(capsys, str(tmp_path / "run"), "-o", str(tmp_path / "ddim3.onnx"), "--steps", "3")
    assert code == 0 and result["sampler_steps"] == 3


@pytest.mark.parametrize("guidance_w", [0.0, 0.5])
def test_numpy_ddim_matches_the_torch_sampler_given_the_same_noise(tmp_path, guidance_w):
    """The runtime's NumPy loop around the exported denoiser reproduces ``predict_chunk`` for the
    same noise (self-guidance included: the graph returns the guided estimate)."""
    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    policy = policy_class("diffusion").from_dataset(ds, {**TINY_SAMPLER, "num_inference_steps": 5,
                                                         "guidance_w": guidance_w, "prediction_type": "sample"})
    spec = dataclasses.replace(deploy_spec(policy, None, {}), sampler=policy.sampler_spec())
    path = tmp_path / "denoiser.onnx"
    export_onnx(NamedInputs(policy.export_modules()["denoiser"]), spec, path, n_random=4)
    session = OnnxPolicy(path).session
    rng = np.random.default_rng(0)
    for _ in range(3):
        hist = rng.normal(size=(1, policy.history_len, 2)).astype(np.float32)
        noise = rng.normal(size=(1, 8, 2)).astype(np.float32)
        got = ddim_chunk(lambda x, t: session.run(None, {"x": hist, SAMPLE_INPUT: x, TIMESTEP_INPUT: t})[0],
                         noise, spec.sampler)
        expected = policy.predict_chunk({"x": hist}, noise=noise).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_runtime_sampler_draws_fresh_noise_when_seeded(tmp_path, capsys):
    save_policy(tmp_path / "run", "diffusion", {**TINY_SAMPLER, "num_inference_steps": 3,
                                                "prediction_type": "sample"})
    assert export(capsys, str(tmp_path / "run"), "-o", str(tmp_path / "p.onnx"), "--sampler", "runtime")[0] == 0
    a, b = OnnxPolicy(tmp_path / "p.onnx", sampler_seed=1), OnnxPolicy(tmp_path / "p.onnx", sampler_seed=1)
    first = a.predict_chunk(obs_at(0))
    np.testing.assert_array_equal(first, b.predict_chunk(obs_at(0)))  # seeded: reproducible
    assert not np.allclose(first, a.predict_chunk(obs_at(0)))          # but fresh per chunk
    assert export(capsys, str(tmp_path / "run"), "-o", str(tmp_path / "g.onnx"))[0] == 0
    with pytest.raises(ValueError, match="--sampler runtime or --sampler graph-noise"):
        OnnxPolicy(tmp_path / "g.onnx", sampler_seed=1)


# ----------------------------------------------------------------------------- consistency, BC


def test_consistency_exports_one_or_k_steps(tmp_path, capsys):
    save_policy(tmp_path / "run", "consistency", {**TINY_SAMPLER, "num_inference_steps": 1})
    for k in ("1", "3"):
        out = tmp_path / f"cm{k}.onnx"
        code, result = export(capsys, str(tmp_path / "run"), "-o", str(out), "--steps", k, "--check")
        assert code == 0 and result["sampler_steps"] == int(k) and result["max_abs_diff"] <= 1e-5
        assert json.loads(out.with_suffix(".json").read_text())["sampler"] == "graph"


def test_distilled_consistency_student_exports_and_matches_torch(tmp_path, capsys):
    """A student in its teacher's coordinates (sigma -> DDPM timestep interpolated in the graph)
    exports at 1 and 3 steps and onnxruntime matches torch."""
    from serl_ctrl.agents.consistency import ConsistencyPolicy
    from serl_ctrl.agents.diffusion import DiffusionPolicy

    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    teacher = DiffusionPolicy.from_dataset(ds, {**TINY_SAMPLER, "prediction_type": "sample"}, seed=0)
    student = ConsistencyPolicy.from_dataset(ds, {**TINY_SAMPLER, "num_inference_steps": 3}, seed=1, teacher=teacher)
    assert student.config.teacher_coordinates
    student.save(tmp_path / "run" / "model")
    for k in ("1", "3"):
        code, result = export(capsys, str(tmp_path / "run"), "-o", str(tmp_path / f"cd{k}.onnx"), "--steps", k,
                              "--check")
        assert code == 0 and result["sampler_steps"] == int(k) and result["max_abs_diff"] <= 1e-5, result


@pytest.mark.parametrize("algo, noise_names, config", [
    ("consistency", ["noise_0", "noise_1", "noise_2"], {}),
    ("diffusion", ["noise"], {"prediction_type": "sample"}),
])
def test_graph_noise_export_takes_the_samplers_noise_from_the_runtime(tmp_path, capsys, algo, noise_names, config):
    """``--sampler graph-noise``: the unrolled sampler with its noise as graph inputs. Without a seed
    the runtime feeds zeros (the default export's chunk); with one, fresh seeded noise per chunk."""
    save_policy(tmp_path / "run", algo, {**TINY_SAMPLER, "num_inference_steps": 3, **config})
    for sampler in ("graph", "graph-noise"):
        code, result = export(capsys, str(tmp_path / "run"), "-o", str(tmp_path / f"{sampler}.onnx"),
                              "--sampler", sampler, "--check")
        assert code == 0 and result["sampler"] == sampler and result["max_abs_diff"] <= 1e-5, result
    path = tmp_path / "graph-noise.onnx"
    spec = OnnxPolicy(path).spec
    assert spec.noise_inputs == {name: (8, 2) for name in noise_names}
    assert [i.name for i in OnnxPolicy(path).session.get_inputs()] == ["x", *noise_names]
    assert PolicySpec.from_json(spec.to_json()) == spec
    assert json.loads(path.with_suffix(".json").read_text())["sampler"] == "graph-noise"
    # No seed: zeros, the same actions as the default export.
    zeros, default = OnnxPolicy(path), OnnxPolicy(tmp_path / "graph.onnx")
    expected = [default.predict_chunk(obs_at(s)) for s in range(4)]
    np.testing.assert_allclose([zeros.predict_chunk(obs_at(s)) for s in range(4)], expected, atol=1e-5)
    # A seed: fresh standard-normal noise per chunk, reproducible.
    a, b = load_policy(path, sampler_seed=1), OnnxPolicy(path, sampler_seed=1)
    first = a.predict_chunk(obs_at(0))
    np.testing.assert_array_equal(first, b.predict_chunk(obs_at(0)))
    assert not np.allclose(first, expected[0], atol=1e-3)           # not zeros
    assert not np.allclose(first, a.predict_chunk(obs_at(0)))        # fresh per chunk
    draws = np.random.default_rng(1)
    feeds = {"x": np.zeros((1, 2, 2), np.float32)}
    feeds.update({n: draws.standard_normal((1, 8, 2), dtype=np.float32) for n in noise_names})
    c = OnnxPolicy(path, sampler_seed=1)
    c.predict_chunk({"x": np.zeros(2, np.float32)})  # history of two zero frames
    got = c.predict_chunk({"x": np.zeros(2, np.float32)})
    # the second chunk used the second draw from default_rng(1): compare with feeding it by hand
    feeds.update({n: draws.standard_normal((1, 8, 2), dtype=np.float32) for n in noise_names})
    want = OnnxPolicy(path).session.run(None, feeds)[0][0]
    np.testing.assert_allclose(got, np.clip(want, spec.action_low, spec.action_high), atol=1e-6)
    # The default file has no noise to draw, also through `serl-ctrl eval --sampler-seed`.
    with pytest.raises(ValueError, match="graph.onnx: sampler_seed applies to .*--sampler graph-noise"):
        OnnxPolicy(tmp_path / "graph.onnx", sampler_seed=1)
    assert cli.main(["eval", "--policy", str(tmp_path / "graph.onnx"), "--sampler-seed", "1", "--json"]) != 0
    assert "sampler_seed applies to" in capsys.readouterr().err


def test_graph_noise_file_whose_spec_lacks_the_noise_inputs_fails_at_load(tmp_path, capsys):
    import onnx

    save_policy(tmp_path / "run", "consistency", {**TINY_SAMPLER, "num_inference_steps": 1})
    path = tmp_path / "p.onnx"
    assert export(capsys, str(tmp_path / "run"), "-o", str(path), "--sampler", "graph-noise")[0] == 0
    model = onnx.load(str(path))
    for entry in model.metadata_props:
        if entry.key == "serl_ctrl":
            d = json.loads(entry.value)
            del d["noise_inputs"]
            entry.value = json.dumps(d)
    onnx.save(model, str(tmp_path / "stripped.onnx"))
    with pytest.raises(ValueError, match="stripped.onnx: graph inputs .*'noise_0'.* do not match the spec"):
        OnnxPolicy(tmp_path / "stripped.onnx")


# ----------------------------------------------------------------------------- language


def test_language_conditioned_policy_takes_the_instruction_as_an_input(tmp_path, capsys, demos):
    """An ``instruction_embedding`` (384,) observation is a plain float input: exported, checked, and
    given to the runtime in the observation or once with ``set_instruction``."""
    rng = np.random.default_rng(0)
    instructions = rng.normal(size=(2, INSTRUCTION_DIM)).astype(np.float32)

    def toward(e, T, rng):  # the instruction says which way to go
        return np.tile([1.0, -1.0] if e % 2 else [-1.0, 1.0], (T, 1))

    episodes = toy_episodes(n=4, action_fn=toward)
    for e, ep in enumerate(episodes):
        ep.observations[INSTRUCTION_KEY] = np.tile(instructions[e % 2], (ep.length + 1, 1))
    write_toy_episodes(tmp_path / "demos", episodes)
    from serl_ctrl.agents.imitation import train_imitation

    train_imitation("bc", tmp_path / "demos", tmp_path / "run", {**TINY, "hidden_dims": (32, 32)}, steps=30)
    out = tmp_path / "lang.onnx"
    code, result = export(capsys, str(tmp_path / "run"), "-o", str(out), "--check")
    assert code == 0 and result["recorded_samples"] > 0 and result["max_abs_diff"] <= 1e-5, result
    policy = OnnxPolicy(out)
    assert policy.spec.language_conditioned and policy.spec.obs[INSTRUCTION_KEY].shape == (INSTRUCTION_DIM,)
    assert json.loads(out.with_suffix(".json").read_text())["language_conditioned"] is True
    with pytest.raises(ValueError, match="set_instruction"):
        policy.act(obs_at(0))
    torch_policy = runtime_policy(policy_class("bc").load(tmp_path / "run" / "model"))
    for instruction in instructions:
        in_obs = policy.predict_chunk({**obs_at(1), INSTRUCTION_KEY: instruction})
        policy.reset()
        policy.set_instruction(instruction)
        np.testing.assert_array_equal(policy.predict_chunk(obs_at(1)), in_obs)
        policy.reset()
        np.testing.assert_allclose(in_obs, torch_policy.predict_chunk({**obs_at(1), INSTRUCTION_KEY: instruction}),
                                   atol=1e-5)
        torch_policy.reset()
    # Episodes labelled with instructions but without embeddings: real states, synthetic instructions.
    code, result = export(capsys, str(tmp_path / "run"), "-o", str(tmp_path / "b.onnx"), "--episodes", str(demos))
    assert code == 0 and result["recorded_samples"] == 16, result
    with pytest.raises(ValueError, match=r"'instruction_embedding' has shape \(3,\)"):
        policy.set_instruction(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="takes no instruction"):
        load_policy("pickcube_diffusion_state").set_instruction(instructions[0])


# ----------------------------------------------------------------------------- compatibility, bad input


def test_shipped_schema_1_files_still_load():
    for name in ("pickcube_diffusion_state", "pickcube_consistency_state"):
        spec = load_policy(name).spec
        assert spec.schema_version == 1 and spec.sampler is None and not spec.language_conditioned


def test_bad_input_exits_2_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    code, result = export(capsys, str(missing), "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and str(missing) in result["error"]
    (tmp_path / "empty").mkdir()
    code, result = export(capsys, str(tmp_path / "empty"), "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and str(tmp_path / "empty") in result["error"] and "checkpoint" in result["error"]
    save_policy(tmp_path / "cm", "consistency", {**TINY_SAMPLER})
    code, result = export(capsys, str(tmp_path / "cm"), "-o", str(tmp_path / "x.onnx"), "--sampler", "runtime")
    assert code == 2 and str(tmp_path / "cm") in result["error"] and "diffusion" in result["error"]
    desc = tmp_path / "cm" / "model.json"
    desc.write_text(desc.read_text().replace('"algo": "consistency"', '"algo": "gan"'))
    code, result = export(capsys, str(tmp_path / "cm"), "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and str(tmp_path / "cm") in result["error"] and "'gan'" in result["error"]
    code, result = export(capsys, str(missing), "-o", str(tmp_path / "x.pt"))
    assert code == 2 and ".onnx" in result["error"]
    assert not (tmp_path / "x.onnx").exists()
