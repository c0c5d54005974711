"""Diffusion policy and the shared imitation pieces: schedule and DDIM, normaliser, chunk dataset,
SGAC self-guidance, save/load, export modules, a bimodal toy (diffusion vs Gaussian BC) and a
state policy that overfits a few reach demonstrations and succeeds in simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from serl_ctrl.agents.bc import BCPolicy
from serl_ctrl.agents.diffusion import (DiffusionConfig, DiffusionPolicy, ddim_sample, ddim_step, ddim_timesteps,
                                        make_betas)
from serl_ctrl.agents.imitation import (ChunkDataset, ConfigError, ImitationPolicy, load_policy, rollout_success,
                                        train_imitation, train_policy)
from imitation_helpers import toy_episodes
from serl_ctrl.nn.normalizer import Normalizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")




# ============================================================================ schedule and DDIM


def test_squaredcos_schedule_matches_formula():
    T = 100
    betas = make_betas(T, "squaredcos_cap_v2")
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = np.cumprod(1 - betas)
    assert betas.shape == (T,) and np.all(betas > 0) and np.all(betas <= 0.999)
    np.testing.assert_allclose(abar[:-1], [f(t + 1) / f(0) for t in range(T - 1)], rtol=1e-9)
    assert np.all(np.diff(abar) < 0) and abar[0] > 0.999 and abar[-1] < 1e-6
    np.testing.assert_allclose(make_betas(10, "linear")[[0, -1]], [1e-4, 2e-2])
    with pytest.raises(ValueError, match="valid"):
        make_betas(10, "cosine")


def test_ddim_timesteps():
    assert ddim_timesteps(100, 10, "trailing") == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert ddim_timesteps(100, 10, "leading") == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert ddim_timesteps(100, 100, "trailing") == list(range(99, -1, -1)) == ddim_timesteps(100, 100, "leading")
    with pytest.raises(ValueError):
        ddim_timesteps(100, 0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_ddim_all_steps_recovers_known_gaussian(prediction_type):
    """Data N(mu, s^2): with the exact denoiser, DDIM over all 100 steps maps N(0, I) to the data."""
    mu, s = torch.tensor([0.3, -0.5, 0.0]), torch.tensor([0.2, 0.1, 0.4])
    abar = np.cumprod(1 - make_betas(100))

    def model(x, t):
        a = float(abar[t])
        var = a * s ** 2 + 1 - a
        eps = math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / var  # E[eps | x_t] for Gaussian data
        return eps if prediction_type == "epsilon" else (x - math.sqrt(1 - a) * eps) / math.sqrt(a)

    x = torch.randn(40000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = ddim_timesteps(100, 100)
    out = ddim_sample(model, x, abar, ts, clip_sample=False, prediction_type=prediction_type)
    np.testing.assert_allclose(out.mean(0), mu, atol=0.01)
    # For Gaussian data every DDIM step is affine, x_prev = k x + c, so the output std is exactly
    # prod(k): the sampler must match it; the discretisation (not a bug) keeps it a few % under s.
    s64 = s.double().numpy()
    k = np.ones(3)
    for i, t in enumerate(ts):
        a, b = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        k *= (math.sqrt(a * b) * s64 ** 2 + math.sqrt((1 - a) * (1 - b))) / (a * s64 ** 2 + 1 - a)
    np.testing.assert_allclose(out.std(0), k, rtol=0.015)
    np.testing.assert_allclose(k, s64, rtol=0.1)
    # one step from pure noise lands on the posterior mean of x_0, i.e. mu
    one = ddim_sample(model, x[:100], abar, [99], clip_sample=False, prediction_type=prediction_type)
    np.testing.assert_allclose(one.mean(0), mu, atol=0.01)


def test_ddpm_ancestral_sampler_recovers_known_gaussian():
    """eta = 1 over all 100 steps is DDPM's ancestral sampler: with the exact denoiser it maps
    N(0, I) to the data N(mu, s^2), fresh noise at every step (none after the last)."""
    mu, s = torch.tensor([0.3, -0.5, 0.0], dtype=torch.float64), torch.tensor([0.2, 0.1, 0.4], dtype=torch.float64)
    abar = np.cumprod(1 - make_betas(100))

    def model(x, t):  # x_0 prediction: E[x_0 | x_t] for Gaussian data
        a = float(abar[t])
        return mu + math.sqrt(a) * s ** 2 * (x - math.sqrt(a) * mu) / (a * s ** 2 + 1 - a)

    gen = torch.Generator().manual_seed(0)
    draws = []

    def noise_fn(x):
        draws.append(1)
        return torch.randn(x.shape, generator=gen, dtype=x.dtype)

    x = torch.randn(40000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = ddim_sample(model, x, abar, ddim_timesteps(100, 100), clip_sample=False, prediction_type="sample",
                      eta=1.0, noise_fn=noise_fn)
    assert len(draws) == 99
    np.testing.assert_allclose(out.mean(0), mu, atol=0.01)
    # Each step is affine plus noise, x_prev = k x + c + sigma z: the output variance follows
    # v <- k^2 v + sigma^2 exactly. DDPM's sigma^2 (beta tilde) ignores Var[x_0 | x_t], so v ends a
    # little under s^2 (Bao et al., Analytic-DPM): the sampler must match v, not s^2.
    s64, v, ts = s.numpy(), np.ones(3), ddim_timesteps(100, 100)
    for i, t in enumerate(ts):
        a, b = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        g = math.sqrt(a) * s64 ** 2 / (a * s64 ** 2 + 1 - a)
        var = (1 - b) / (1 - a) * (1 - a / b)
        k = math.sqrt(b) * g + math.sqrt(max(1 - b - var, 0.0)) * (1 - math.sqrt(a) * g) / math.sqrt(1 - a)
        v = k ** 2 * v + var
    np.testing.assert_allclose(out.std(0), np.sqrt(v), rtol=0.015)
    np.testing.assert_allclose(np.sqrt(v), s64, rtol=0.15)
    # deterministic DDIM from the same start differs: the stochastic path really used its noise
    det = ddim_sample(model, x, abar, ddim_timesteps(100, 100), clip_sample=False, prediction_type="sample")
    assert (det - out).abs().mean() > 0.05
    with pytest.raises(ValueError, match="needs noise"):
        ddim_step(x, model(x, 50), float(abar[50]), float(abar[40]), False, "sample", eta=1.0)


def test_ddpm_policy_sampling_is_seeded_and_not_exportable():
    pol, _ = tiny_policy(eta=1.0, num_inference_steps=100)
    pol.eval()
    obs = {k: torch.zeros(1, 2, *shape) for k, shape in pol.spec.shapes.items()}
    pol.seed(3)
    a = pol.predict_chunk(obs)
    pol.seed(3)
    assert torch.equal(a, pol.predict_chunk(obs))
    pol.seed(4)
    assert not torch.equal(a, pol.predict_chunk(obs))
    with pytest.raises(ConfigError, match="eta"):
        pol.export_modules()
    with pytest.raises(ConfigError, match="eta"):
        pol.sampler_spec()
    with pytest.raises(ConfigError, match="eta"):
        DiffusionConfig(eta=1.5)


def test_ddim_step_clips_x0_and_keeps_noise_consistent():
    x = torch.full((1, 2), 3.0)
    eps = torch.zeros(1, 2)  # implies x0 = x / sqrt(abar) > 1: clipped to 1
    x_prev, x0 = ddim_step(x, eps, 0.5, 1.0, clip_sample=True)
    assert torch.all(x0 == 1.0) and torch.allclose(x_prev, x0)


# ============================================================================ normaliser and dataset


def test_normalizer_round_trip_and_ranges():
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(3.0, 2.0, (500, 4)).astype(np.float32),
            "b": np.concatenate([rng.uniform(-5, 7, (500, 2)), np.full((500, 1), 0.25)], 1).astype(np.float32)}
    norm = Normalizer({"a": 4, "b": 3}).fit(data, {"a": "gaussian", "b": "limits"})
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    y = norm.normalize(t)
    assert torch.allclose(y["a"].mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y["a"].std(0, unbiased=False), torch.ones(4), atol=1e-4)
    assert y["b"][:, :2].min() >= -1 - 1e-6 and y["b"][:, :2].max() <= 1 + 1e-6
    assert torch.allclose(y["b"][:, :2].amin(0), -torch.ones(2)) and torch.allclose(y["b"][:, 2], torch.zeros(1))
    back = norm.unnormalize(y)
    for k in data:
        torch.testing.assert_close(back[k], t[k], rtol=1e-5, atol=1e-5)
    # statistics are buffers: they travel in the state dict
    assert {"fields.a.scale", "fields.a.offset", "fields.b.scale"} <= set(norm.state_dict())
    with pytest.raises(ValueError, match="NaN"):
        Normalizer({"a": 1}).fit({"a": np.array([[np.nan]])})


def test_chunk_dataset_windows_and_padding():
    eps = toy_episodes(n=2, T=5)
    ds = ChunkDataset(eps, n_obs_steps=3, horizon=4)
    assert len(ds) == 10 and ds.obs_shapes == {"x": (2,)} and ds.action_dim == 2
    b = ds.get(np.array([0, 1, 4, 5, 9]))
    # t = 0: history repeats obs[0]; t = 1: [0, 0, 1]
    np.testing.assert_array_equal(b["obs"]["x"][0, :, 0], [0, 0, 0])
    np.testing.assert_array_equal(b["obs"]["x"][1, :, 0], [0, 0, 1])
    np.testing.assert_array_equal(b["obs"]["x"][2, :, 0], [2, 3, 4])
    # the second episode starts fresh (index 5 = episode 1, t = 0), never mixing episodes
    np.testing.assert_array_equal(b["obs"]["x"][3], [[0, 1]] * 3)
    # action chunks start at t and repeat the last action past the end, with a mask
    np.testing.assert_array_equal(b["action"][1, :, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(b["action"][2, :, 0], [4, 4, 4, 4])
    np.testing.assert_array_equal(b["action_mask"][2], [True, False, False, False])
    np.testing.assert_array_equal(b["action"][4, :, 1], [-4, -4, -4, -4])
    s = ds.sample(7, np.random.default_rng(0))
    assert s["obs"]["x"].shape == (7, 3, 2) and s["action"].shape == (7, 4, 2)
    with pytest.raises(KeyError, match="nope"):
        ChunkDataset(eps, obs_keys=["nope"])


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown DiffusionConfig field.*bogus"):
        DiffusionConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="n_action_steps"):
        DiffusionConfig(horizon=4, n_action_steps=8)
    with pytest.raises(ConfigError, match="denoiser"):
        DiffusionConfig(denoiser="transformer")
    assert DiffusionConfig.from_dict({"down_dims": [8, 16]}).down_dims == (8, 16)


# ============================================================================ policy mechanics


def tiny_policy(cls=DiffusionPolicy, seed=0, **cfg):
    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    base = {"horizon": 8, "n_action_steps": 4}
    if cls is not BCPolicy:
        base.update(denoiser="unet", down_dims=(8, 16), n_groups=4, time_embed_dim=16)
    return cls.from_dataset(ds, {**base, **cfg}, seed=seed), ds


def test_sgac_batched_pass_equals_two_separate_passes():
    policy, ds = tiny_policy()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 2, generator=g)
    t = torch.tensor([5, 50, 99])
    cond, cond_prev = torch.randn(3, policy.obs_feature_dim, generator=g), torch.randn(3, policy.obs_feature_dim,
                                                                                       generator=g)
    w = 1.5
    with torch.no_grad():
        batched = policy.guided_eps(x, t, cond, cond_prev, w)
        separate = (1 + w) * policy.denoiser(x, t, cond) - w * policy.denoiser(x, t, cond_prev)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)
    # ONE denoiser call with both conditions stacked in the batch
    calls = []
    hook = policy.denoiser.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        policy.guided_eps(x, t, cond, cond_prev, w)
    hook.remove()
    assert calls == [6]


def test_self_guidance_history_and_prediction():
    policy, ds = tiny_policy(guidance_w=1.0)
    assert policy.history_len == 3
    hist = {"x": np.array([[0, 1], [1, 1], [2, 1]], np.float32)}
    noise = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    a = policy.predict_action(hist, noise=noise)
    assert a.shape == (8, 2)
    # the guided sample depends on the older observation; unguided it does not
    hist2 = {"x": np.array([[5, 1], [1, 1], [2, 1]], np.float32)}
    assert not np.allclose(policy.predict_action(hist2, noise=noise), a)
    policy.config.guidance_w = 0.0
    np.testing.assert_array_equal(policy.predict_action(hist, noise=noise), policy.predict_action(hist2, noise=noise))


@pytest.mark.parametrize("cls", [DiffusionPolicy, BCPolicy])
def test_save_load_round_trip_bit_identical(tmp_path, cls):
    policy, ds = tiny_policy(cls)
    train_policy(policy, ds, 20, seed=0)
    path = policy.save(tmp_path / "pol")
    assert path.name == "pol.safetensors" and (tmp_path / "pol.json").is_file()
    loaded = ImitationPolicy.load(tmp_path / "pol.json")
    assert type(loaded) is cls and loaded.config == policy.config
    hist = {"x": np.array([[1, 2], [2, 2]], np.float32)}
    noise = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_action(hist, noise=noise), policy.predict_action(hist, noise=noise))
    desc = json.loads((tmp_path / "pol.json").read_text())
    assert desc["algo"] == cls.algo and desc["obs_shapes"] == {"x": [2]}
    # a JSON from another save does not pass for this tensor file
    other, _ = tiny_policy(cls, seed=1)
    other.save(tmp_path / "other")
    (tmp_path / "pol.json").write_text((tmp_path / "other.json").read_text())
    with pytest.raises(ValueError, match="do not belong together"):
        load_policy(tmp_path / "pol")


class _Killed(Exception):
    pass


def _resumable(kind):
    if kind == "consistency-cd":  # an EMA target network outside the policy's weights
        from serl_ctrl.agents.consistency import ConsistencyPolicy

        teacher, ds = tiny_policy(DiffusionPolicy, num_inference_steps=5)
        cfg = {"horizon": 8, "n_action_steps": 4, "denoiser": "mlp", "mlp_hidden": (32, 32), "cd_stride": 10,
               "cd_jump": 1}
        return ConsistencyPolicy.from_dataset(ds, cfg, seed=1, teacher=teacher), ds
    return tiny_policy(BCPolicy if kind == "bc" else DiffusionPolicy)


@pytest.mark.parametrize("kind", ["diffusion", "bc", "consistency-cd"])
def test_training_killed_mid_run_resumes_to_the_same_weights(tmp_path, kind):
    """Checkpoint every 10 steps, die at step 25, resume in a fresh process-like object: the final
    weights (EMA included) and loss history equal those of a run that was never interrupted."""
    policy, ds = _resumable(kind)
    whole = train_policy(policy, ds, 30, seed=3, log_every=5)

    killed, ds = _resumable(kind)

    def die(step, row):
        if step == 25:
            raise _Killed

    with pytest.raises(_Killed):
        train_policy(killed, ds, 30, seed=3, log_every=5, callback=die, checkpoint_dir=tmp_path, checkpoint_every=10)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.json")) == ["ckpt_000000010.json", "ckpt_000000020.json"]
    resumed, ds = _resumable(kind)
    part = train_policy(resumed, ds, 30, seed=3, log_every=5, checkpoint_dir=tmp_path, checkpoint_every=10,
                        resume=True)
    assert [r["loss"] for r in part["history"]] == [r["loss"] for r in whole["history"]]
    ref = policy.state_dict()
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)
    # another budget changes the learning-rate schedule: refused, naming what differs
    other, ds = _resumable(kind)
    with pytest.raises(Exception, match="steps"):
        train_policy(other, ds, 40, seed=3, checkpoint_dir=tmp_path, checkpoint_every=10, resume=True)


def test_imitation_command_resume_refuses_and_continues(tmp_path, reach_demos):
    """--resume without a checkpoint is an error; an interrupted run's folder is not overwritten."""
    from serl_ctrl.agents.imitation import train_imitation

    cfg = {"denoiser": "mlp", "mlp_hidden": (32, 32), "horizon": 8, "n_action_steps": 4}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_imitation("diffusion", reach_demos, tmp_path / "run", cfg, steps=20, resume=True)
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    policy, ds = tiny_policy()
    train_policy(policy, ds, 20, checkpoint_dir=tmp_path / "run" / "ckpt", checkpoint_every=10)
    with pytest.raises(FileExistsError, match="--resume"):
        train_imitation("diffusion", reach_demos, tmp_path / "run", cfg, steps=20)
    done = train_imitation("bc", reach_demos, tmp_path / "run2", {"horizon": 8, "n_action_steps": 4}, steps=20,
                           checkpoint_every=10)
    assert not (tmp_path / "run2" / "ckpt").exists() and (tmp_path / "run2" / "model.safetensors").is_file()
    assert done["metrics"]["steps"] == 20


def test_predict_action_checks_inputs():
    policy, _ = tiny_policy()
    with pytest.raises(KeyError, match="missing key 'x'"):
        policy.predict_action({"y": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="shape"):
        policy.predict_action({"x": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="noise"):
        policy.predict_action({"x": np.zeros((2, 2), np.float32)}, noise=np.zeros((3, 3)))
    policy.seed(3)
    a = policy.predict_action({"x": np.zeros((2, 2), np.float32)})
    policy.seed(3)
    np.testing.assert_array_equal(a, policy.predict_action({"x": np.zeros((2, 2), np.float32)}))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_export_modules_match_predict_action_and_export_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    policy, _ = tiny_policy(num_inference_steps=4)
    mods = policy.export_modules()
    hist = np.array([[1, 2], [2, 2]], np.float32)
    noise = np.random.default_rng(2).standard_normal((8, 2)).astype(np.float32)
    with torch.no_grad():
        out = mods["unrolled"](torch.from_numpy(hist)[None], torch.from_numpy(noise)[None])[0].numpy()
    np.testing.assert_allclose(out, policy.predict_action({"x": hist}, noise=noise), atol=1e-6)
    for name, m in mods.items():
        if name == "deploy":
            continue
        ex = m.example_inputs(2)
        assert len(ex) == len(m.input_names)
        f = tmp_path / f"{name}.onnx"
        torch.onnx.export(m, ex, str(f), input_names=m.input_names, output_names=m.output_names,
                          dynamic_axes=m.dynamic_axes, dynamo=False, opset_version=18)
        sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        feeds = {n: t.numpy() + (0.3 if t.dtype == torch.float32 else 0) for n, t in zip(m.input_names, ex)}
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            ref = m(*[torch.from_numpy(feeds[n]) for n in m.input_names]).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)


# ============================================================================ learning


def test_bimodal_toy_diffusion_keeps_both_modes_bc_averages():
    """Same observation, actions +0.8 or -0.8 (a coin flip): diffusion samples both, BC the mean."""

    def coin(e, T, rng):
        return np.full((T, 2), 0.8 if e % 2 else -0.8) + rng.normal(0, 0.02, (T, 2))

    eps = toy_episodes(n=16, T=4, action_fn=coin)
    for ep in eps:
        ep.observations["x"][:] = 0.0  # the observation says nothing about the mode
        ep.metadata["action_low"], ep.metadata["action_high"] = [-1, -1], [1, 1]
    ds = ChunkDataset(eps, n_obs_steps=1, horizon=4)
    cfg = {"n_obs_steps": 1, "horizon": 4, "n_action_steps": 2, "lr": 3e-3, "batch_size": 64, "warmup_steps": 10}
    diff = DiffusionPolicy.from_dataset(ds, {**cfg, "denoiser": "mlp", "mlp_hidden": (64, 64),
                                             "time_embed_dim": 16, "prediction_type": "sample"}, seed=0)
    bc = BCPolicy.from_dataset(ds, {**cfg, "hidden_dims": (64, 64)}, seed=0)
    train_policy(diff, ds, 300, seed=0)
    train_policy(bc, ds, 150, seed=0)
    obs = {"x": np.zeros((64, 1, 2), np.float32)}
    first = diff.predict_chunk(obs, generator=torch.Generator().manual_seed(0))[:, 0, 0].numpy()
    assert (first > 0.5).mean() > 0.2 and (first < -0.5).mean() > 0.2  # both modes
    assert np.mean(np.abs(first) > 0.5) > 0.9  # and little in between
    assert abs(float(bc.predict_action({"x": np.zeros((1, 2), np.float32)})[0, 0])) < 0.3  # the average


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory):
    from serl_ctrl.data.demos import record_demonstrations

    out = tmp_path_factory.mktemp("reach_demos")
    report = record_demonstrations("reach", out, 4, seed=100)
    assert report.successes == 4
    return out


def test_state_diffusion_policy_overfits_reach_demos_and_succeeds(reach_demos, tmp_path):
    # x_0 prediction: on CPU budgets it fits ~3x faster than epsilon prediction (bench_imitation.py)
    cfg = {"denoiser": "mlp", "mlp_hidden": (128, 128), "time_embed_dim": 32, "lr": 2e-3, "batch_size": 64,
           "warmup_steps": 20, "n_action_steps": 2, "prediction_type": "sample"}
    result = train_imitation("diffusion", reach_demos, tmp_path / "run", cfg, steps=400, seed=0)
    assert result["checkpoint"].endswith("model.safetensors") and (tmp_path / "run" / "metrics.json").is_file()
    policy = load_policy(result["checkpoint"])
    ev = rollout_success(policy, "reach", episodes=4, seed=100)  # the demonstrated seeds: overfitting is the test
    assert ev["success_rate"] >= 0.75, ev
    assert ev["inferences_per_episode"] >= 1 and ev["records"][0]["seed"] == 100


@pytest.mark.parametrize("algo", ["diffusion", "consistency", "bc"])
def test_deploy_module_goes_through_the_onnx_exporter_and_runtime(tmp_path, algo):
    pytest.importorskip("onnxruntime")
    from serl_ctrl.agents.imitation import policy_class, runtime_policy
    from serl_ctrl.export.onnx_export import export_onnx
    from serl_ctrl.runtime.onnx_policy import OnnxPolicy

    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    cfg = {"horizon": 8, "n_action_steps": 4}
    if algo != "bc":
        cfg.update(denoiser="mlp", mlp_hidden=(16, 16), time_embed_dim=8, num_inference_steps=2)
    policy = policy_class(algo).from_dataset(ds, cfg, seed=0)
    spec = runtime_policy(policy).spec
    report = export_onnx(policy.export_modules()["deploy"], spec, tmp_path / f"{algo}.onnx", n_random=4)
    assert report.parity_max_abs_diff <= 1e-5
    onnx_policy = OnnxPolicy(tmp_path / f"{algo}.onnx")
    action = onnx_policy.act({"x": np.array([1.0, 2.0], np.float32)})
    assert action.shape == (2,) and onnx_policy.spec.horizon == 8 and onnx_policy.spec.n_action_steps == 4
    # the torch policy evaluated with zero noise acts as the exported file does; fresh noise differs
    onnx_policy.reset()
    torch_zero, torch_fresh = runtime_policy(policy, zero_noise=True), runtime_policy(policy)
    policy.seed(0)
    obs = [{"x": np.array([1.0 + 0.1 * i, 2.0 - 0.2 * i], np.float32)} for i in range(6)]
    a_onnx = np.array([onnx_policy.act(o) for o in obs])
    a_zero = np.array([torch_zero.act(o) for o in obs])
    a_fresh = np.array([torch_fresh.act(o) for o in obs])
    np.testing.assert_allclose(a_zero, a_onnx, atol=1e-5)
    if algo != "bc":
        assert np.abs(a_fresh - a_onnx).max() > 1e-3


def test_pixel_policy_trains_and_augments_each_window_with_one_shift():
    rng = np.random.default_rng(0)
    eps = toy_episodes(n=2, T=5)
    for ep in eps:  # a 16 px camera whose frames repeat within an episode
        frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        ep.observations["cam"] = np.repeat(frame[None], ep.length + 1, axis=0)
    ds = ChunkDataset(eps, n_obs_steps=2, horizon=8)
    cfg = {"horizon": 8, "n_action_steps": 4, "denoiser": "mlp", "mlp_hidden": (32, 32), "time_embed_dim": 16,
           "encoder": {"channels": 4, "num_layers": 2, "feature_dim": 8, "proprio_dim": 8, "augment_pad": 2}}
    policy = DiffusionPolicy.from_dataset(ds, cfg, seed=0)
    assert policy.spec.image_keys == ("cam",) and policy.spec.state_keys == ("x",)
    batch = policy.batch_to_torch(ds.get(np.arange(len(ds))), torch.Generator().manual_seed(0), augment=True)
    cam = batch["obs"]["cam"]
    assert cam.dtype == torch.uint8 and cam.shape == (len(ds), 2, 16, 16, 3)
    assert torch.equal(cam[:, 0], cam[:, 1])  # both frames of a window shifted alike
    raw = torch.from_numpy(ds.get(np.arange(len(ds)))["obs"]["cam"])
    assert not torch.equal(cam, raw)  # but shifted
    before = [p.detach().clone() for p in policy.encoder.parameters()]
    train_policy(policy, ds, 5, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.encoder.parameters()))  # the encoder learns
    hist = {"x": np.zeros((2, 2), np.float32), "cam": ds.frames["cam"][:2]}
    assert policy.predict_action(hist).shape == (8, 2)
    with pytest.raises(ValueError, match="uint8"):
        policy.predict_action({"x": hist["x"], "cam": hist["cam"].astype(np.float32)})
