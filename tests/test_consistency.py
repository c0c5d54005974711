"""Consistency policies: EDM parameterisation, Karras noise levels, the CT curriculum, 1- and
few-step sampling (shape, determinism given noise), export, distillation from a diffusion teacher,
save/load, a bimodal toy, and Consistency-AC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serl_ctrl.agents.consistency import (ConsistencyAC, ConsistencyPolicy, ct_num_scales, edm_scalings,
                                          karras_sigmas, schedule_sigmas)
from serl_ctrl.agents.diffusion import DiffusionPolicy
from serl_ctrl.agents.imitation import ChunkDataset, ConfigError, ImitationPolicy, train_policy
from imitation_helpers import toy_episodes




pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = {"horizon": 8, "n_action_steps": 4, "denoiser": "mlp", "mlp_hidden": (32, 32), "time_embed_dim": 16}


def tiny(mode="ct", seed=0, teacher=None, **cfg):
    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    return ConsistencyPolicy.from_dataset(ds, {**TINY, "mode": mode, **cfg}, seed=seed, teacher=teacher), ds


def test_edm_boundary_condition_and_karras_sigmas():
    sig = karras_sigmas(18, 0.002, 80.0)
    assert sig[0] == pytest.approx(0.002) and sig[-1] == pytest.approx(80.0) and np.all(np.diff(sig) > 0)
    c_skip, c_out, c_in = edm_scalings(torch.tensor([0.002, 80.0]), 0.002, 0.5)
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[1] < 1e-4 and c_in[1] == pytest.approx(1 / np.hypot(80, .5))
    policy, _ = tiny()
    x = torch.randn(3, 8, 2)
    cond = torch.randn(3, policy.obs_feature_dim)
    torch.testing.assert_close(policy.consistency_fn(x, torch.full((3,), 0.002), cond), x)  # f(x, sigma_min) = x


def test_ct_curriculum_doubles_to_s1():
    total = 8000
    ns = [ct_num_scales(k, total, 10, 1280) for k in range(0, total, 500)]
    assert ns[0] == 11 and ns[-1] == 1281 and all(b >= a for a, b in zip(ns, ns[1:]))
    assert ct_num_scales(0, 1, 10, 10) == 11


@pytest.mark.parametrize("steps", [1, 3])
def test_sampling_shape_and_determinism_given_noise(steps):
    policy, _ = tiny(num_inference_steps=steps)
    assert policy.noise_shape(1) == (1, steps, 8, 2) and len(policy.sample_sigmas) == steps
    assert policy.sample_sigmas[0] == 80.0 and sorted(policy.sample_sigmas, reverse=True) == policy.sample_sigmas
    hist = {"x": np.array([[1, 0], [2, 0]], np.float32)}
    noise = np.random.default_rng(0).standard_normal((steps, 8, 2)).astype(np.float32)
    a = policy.predict_action(hist, noise=noise)
    assert a.shape == (8, 2) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, policy.predict_action(hist, noise=noise))
    assert not np.array_equal(a, policy.predict_action(hist, noise=noise + 1.0))
    # one network evaluation per step
    calls = []
    h = policy.denoiser.register_forward_hook(lambda *a: calls.append(1))
    policy.predict_action(hist, noise=noise)
    h.remove()
    assert len(calls) == steps
    # the export module with one noise input per step equals predict_action
    m = policy.export_modules()["sampler"]
    assert m.input_names == ["x", *[f"noise_{j}" for j in range(steps)]]
    with torch.no_grad():
        out = m(torch.from_numpy(hist["x"])[None], *[torch.from_numpy(n)[None] for n in noise])[0].numpy()
    np.testing.assert_allclose(out, a, atol=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError, match="mode"):
        tiny(mode="xx")
    with pytest.raises(ConfigError, match="sample_sigmas"):
        tiny(num_inference_steps=2, sample_sigmas=(80.0,))


def test_distillation_from_diffusion_teacher_and_save_load(tmp_path):
    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    teacher = DiffusionPolicy.from_dataset(ds, {**TINY, "num_inference_steps": 5}, seed=0)
    train_policy(teacher, ds, 10, seed=0)
    student = ConsistencyPolicy.from_dataset(ds, {**TINY, "cd_stride": 10}, seed=1, teacher=teacher)
    ts, sig = schedule_sigmas(100, "squaredcos_cap_v2", 10)
    assert student.config.mode == "cd" and list(ts) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    assert student.config.sigma_min == pytest.approx(sig[0]) and student.config.sigma_max == pytest.approx(sig[-1])
    # the student reuses the teacher's normalisation (same normalised action space)
    torch.testing.assert_close(student.normalizer.state_dict(), teacher.normalizer.state_dict())
    before = {k: v.clone() for k, v in student.denoiser.state_dict().items()}
    m = train_policy(student, ds, 15, seed=0)
    assert np.isfinite(m["final_loss"]) and any(not torch.equal(before[k], v)
                                                for k, v in student.denoiser.state_dict().items())
    student.config.num_inference_steps = 2
    path = student.save(tmp_path / "cd")
    assert not any(k.startswith("_aux") or "teacher" in k for k in student.state_dict())  # teacher not saved
    loaded = ImitationPolicy.load(path)
    assert type(loaded) is ConsistencyPolicy and loaded.sample_sigmas == student.sample_sigmas
    hist = {"x": np.array([[3, 1], [4, 1]], np.float32)}
    noise = np.random.default_rng(5).standard_normal((2, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_action(hist, noise=noise), student.predict_action(hist, noise=noise))
    with pytest.raises(RuntimeError, match="teacher"):
        loaded.compute_loss(loaded.batch_to_torch(ds.sample(4, np.random.default_rng(0))), torch.Generator())


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_distilled_student_starts_as_the_teachers_one_step_sampler(prediction_type):
    """cd_student="teacher": the student is the teacher's network in the teacher's coordinates, so
    before any update its 1-step chunk is the teacher's DDIM-1 chunk and, at a teacher timestep's
    sigma, the network sees exactly that integer timestep and the variance-preserving input."""
    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    teacher = DiffusionPolicy.from_dataset(ds, {**TINY, "prediction_type": prediction_type,
                                               "num_inference_steps": 1}, seed=0)
    train_policy(teacher, ds, 30, seed=0)
    student = ConsistencyPolicy.from_dataset(ds, {**TINY, "cd_stride": 10, "num_inference_steps": 1}, seed=1,
                                             teacher=teacher)
    assert student.config.cd_prediction_type == prediction_type and student.config.teacher_coordinates
    hist = {"x": np.array([[3, 1], [4, 1]], np.float32)}
    z = np.random.default_rng(0).standard_normal((1, 8, 2)).astype(np.float32)
    # teacher DDIM-1 starts from z at t = T-1; the student from sigma_max z (the same point, VE
    # coordinates). They differ by c_skip(sigma_max) * sigma_max * z ~ 1e-4 (normalised units)
    np.testing.assert_allclose(student.predict_action(hist, noise=z), teacher.predict_action(hist, noise=z[0]),
                               atol=2e-3)
    _, sig = schedule_sigmas(100, "squaredcos_cap_v2")
    seen = []
    h = student.denoiser.register_forward_hook(lambda m, args, out: seen.append((args[0], args[1])))
    x = torch.randn(2, 8, 2)
    with torch.no_grad():
        student.consistency_fn(x, torch.full((2,), float(sig[37])), torch.zeros(2, student.obs_feature_dim))
    h.remove()
    x_in, t = seen[0]
    torch.testing.assert_close(t, torch.full((2,), 37.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(x_in, x / np.sqrt(1 + sig[37] ** 2), atol=1e-6, rtol=0)
    # "scratch" keeps the EDM parameterisation with fresh weights (the pre-existing behaviour)
    scratch = ConsistencyPolicy.from_dataset(ds, {**TINY, "cd_stride": 10, "cd_student": "scratch"}, seed=1,
                                             teacher=teacher)
    assert not scratch.config.teacher_coordinates and not hasattr(scratch, "_teacher_log_sigma")
    with pytest.raises(ConfigError, match="cd_student"):
        ConsistencyPolicy.from_dataset(ds, {**TINY, "cd_student": "copy"}, teacher=teacher)


@pytest.mark.parametrize("jump,calls", [(1, 1), (3, 3), (0, 10)])
def test_distillation_target_takes_up_to_cd_jump_teacher_steps(jump, calls):
    """cd_jump bounds how many teacher DDIM steps separate the two levels compared (1: adjacent, as
    Song et al.; 0: anywhere down to the boundary, CTM-style); one batched teacher call per step."""
    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    teacher = DiffusionPolicy.from_dataset(ds, TINY, seed=0)
    student = ConsistencyPolicy.from_dataset(ds, {**TINY, "cd_stride": 10, "cd_jump": jump, "batch_size": 256},
                                             seed=1, teacher=teacher)
    n = []
    h = teacher.denoiser.register_forward_hook(lambda *a: n.append(1))
    batch = student.batch_to_torch(ds.sample(256, np.random.default_rng(0)))
    loss, info = student.compute_loss(batch, torch.Generator().manual_seed(0))
    h.remove()
    assert torch.isfinite(loss) and len(n) == calls
    assert info["jump"] == 1.0 if jump == 1 else 1.5 < info["jump"] <= (jump or 10)


def test_distilled_students_saved_before_cd_student_load_as_scratch():
    ds = ChunkDataset(toy_episodes(), n_obs_steps=2, horizon=8)
    teacher = DiffusionPolicy.from_dataset(ds, TINY, seed=0)
    old = ConsistencyPolicy.from_dataset(ds, {**TINY, "cd_stride": 10, "cd_student": "scratch"}, seed=1,
                                         teacher=teacher)
    desc = old.describe()
    del desc["config"]["cd_student"]
    loaded = ConsistencyPolicy.from_description(desc)
    assert loaded.config.cd_student == "scratch"
    loaded.load_state_dict(old.state_dict())
    hist = {"x": np.array([[3, 1], [4, 1]], np.float32)}
    z = np.random.default_rng(0).standard_normal((1, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_action(hist, noise=z), old.predict_action(hist, noise=z))


def test_consistency_training_keeps_both_modes_of_a_bimodal_toy():
    def coin(e, T, rng):
        return np.full((T, 2), 0.8 if e % 2 else -0.8) + rng.normal(0, 0.02, (T, 2))

    eps = toy_episodes(n=16, T=4, action_fn=coin)
    for ep in eps:
        ep.observations["x"][:] = 0.0
        ep.metadata["action_low"], ep.metadata["action_high"] = [-1, -1], [1, 1]
    ds = ChunkDataset(eps, n_obs_steps=1, horizon=4)
    cfg = {"n_obs_steps": 1, "horizon": 4, "n_action_steps": 2, "lr": 3e-3, "batch_size": 64, "warmup_steps": 10,
           "denoiser": "mlp", "mlp_hidden": (64, 64), "time_embed_dim": 16}
    policy = ConsistencyPolicy.from_dataset(ds, cfg, seed=0)
    train_policy(policy, ds, 400, seed=0)
    first = policy.predict_chunk({"x": np.zeros((64, 1, 2), np.float32)},
                                 generator=torch.Generator().manual_seed(0))[:, 0, 0].numpy()
    assert (first > 0.4).mean() > 0.2 and (first < -0.4).mean() > 0.2, first


def test_consistency_ac_q_term_picks_the_rewarded_mode():
    """Demonstrations go +0.8 or -0.8; only + is rewarded. BC alone keeps both modes; BC + Q
    (Consistency-AC against an EnsembleCritic) moves the actor onto the rewarded one."""

    def coin(e, T, rng):
        return np.full((T, 2), 0.8 if e % 2 else -0.8) + rng.normal(0, 0.05, (T, 2))

    eps = toy_episodes(n=16, T=4, action_fn=coin)
    for ep in eps:
        ep.observations["x"][:] = 0.0
        ep.rewards[:] = (ep.actions[:, 0] > 0).astype(np.float32)
        ep.metadata["action_low"], ep.metadata["action_high"] = [-1, -1], [1, 1]
    ds = ChunkDataset(eps, n_obs_steps=1, horizon=2)
    cfg = {"n_obs_steps": 1, "horizon": 2, "n_action_steps": 1, "lr": 3e-3, "batch_size": 64, "warmup_steps": 10,
           "denoiser": "mlp", "mlp_hidden": (64, 64), "time_embed_dim": 16}
    actor = ConsistencyPolicy.from_dataset(ds, cfg, seed=0)
    # anchor 0: the anchor clones both modes on the very chunk Q scores (at weight 1 it holds the
    # actor between them here); this test isolates what the Q term can do.
    agent = ConsistencyAC(actor, gamma=0.5, eta=2.0, critic_hidden=(64, 64), critic_lr=3e-3, seed=0,
                          anchor_weight=0.0)
    metrics = agent.train(ds, 400)
    assert np.isfinite(metrics["critic_loss"]) and metrics["steps"] == 400
    first = actor.predict_chunk({"x": np.zeros((64, 1, 2), np.float32)},
                                generator=torch.Generator().manual_seed(0))[:, 0, 0].numpy()
    assert (first > 0.4).mean() > 0.7, first  # BC alone: about half


def test_train_imitation_distils_from_a_saved_teacher(tmp_path):
    """``--set teacher=PATH`` (the command line's way): the student takes the teacher's network
    shape (a conflicting override is refused), is saved without the teacher, and reloads as a
    working policy."""
    from serl_ctrl.agents.imitation import load_policy, train_imitation
    from serl_ctrl.data.demos import record_demonstrations

    demos = tmp_path / "demos"
    record_demonstrations("reach", demos, 3, seed=2)
    small = {"batch_size": 16, "horizon": 8, "n_action_steps": 4, "denoiser": "mlp", "time_embed_dim": 16}
    train_imitation("diffusion", demos, tmp_path / "teacher", {**small, "mlp_hidden": (32, 32)}, steps=5)
    student_cfg = {**small, "teacher": str(tmp_path / "teacher" / "model")}
    with pytest.raises(ConfigError, match="mlp_hidden"):  # it would not be the teacher's network
        train_imitation("consistency", demos, tmp_path / "bad", {**student_cfg, "mlp_hidden": (64,)}, steps=5)
    out = train_imitation("consistency", demos, tmp_path / "student", student_cfg, steps=5)
    assert np.isfinite(out["metrics"]["final_loss"])
    student = load_policy(tmp_path / "student" / "model")
    c = student.config
    assert (c.mode, c.cd_student, c.mlp_hidden, c.cd_prediction_type) == ("cd", "teacher", (32, 32), "sample")
    hist = {k: np.zeros((2, *shape), np.float32) for k, shape in student.spec.shapes.items()}
    assert np.all(np.isfinite(student.predict_action(hist)))
