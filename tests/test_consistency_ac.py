"""serl-ctrl train --algo consistency-ac: settings, the online phase (data, updates), reproducibility,
and the command end to end (train, export, eval)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from serl_ctrl.agents.consistency import ConsistencyAC
from serl_ctrl.agents.consistency_ac_run import (OnlineFinetuner, mixed_batch, split_overrides,
                                                 train_consistency_ac)
from serl_ctrl.agents.imitation import ChunkDataset, ConfigError, build_imitation, load_policy
from serl_ctrl.data.demos import record_demonstrations
from imitation_helpers import toy_episodes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"denoiser": "mlp", "mlp_hidden": [64, 64], "time_embed_dim": 16, "horizon": 8, "n_action_steps": 4,
        "batch_size": 32, "critic_hidden": [64, 64]}


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory):
    """Three dense-reward Reach demonstrations (50 steps each: dense episodes do not end on success)."""
    out = tmp_path_factory.mktemp("demos") / "reach"
    record_demonstrations("reach", out, n=3, seed=0, reward="dense")
    return out


def test_settings_are_split_and_validated_naming_the_field():
    cfg, actor = split_overrides({"eta": 2, "online_steps": 10, "critic_hidden": [32, 32], "horizon": 8})
    assert (cfg.eta, cfg.online_steps, cfg.critic_hidden, cfg.demo_fraction) == (2.0, 10, (32, 32), 0.5)
    assert actor == {"horizon": 8}
    assert split_overrides({"critic_hidden": "32,16"})[0].critic_hidden == (32, 16)
    for bad, field in [({"eta": -1}, "eta"), ({"utd": 0}, "utd"), ({"demo_fraction": 1.5}, "demo_fraction"),
                       ({"online_steps": -5}, "online_steps"), ({"n_critics": 1.5}, "n_critics"),
                       ({"gamma": 1.0}, "gamma"), ({"eta": "lots"}, "eta"), ({"horizon": 0}, "horizon"),
                       ({"mode": "cd"}, "mode"), ({"critic_hidden": [0]}, "critic_hidden"),
                       ({"critic_hidden": "a,b"}, "critic_hidden"), ({"anchor_weight": -1}, "anchor_weight"),
                       ({"cql_weight": -0.5}, "cql_weight")]:
        with pytest.raises(ConfigError, match=field):
            split_overrides(bad)
    with pytest.raises(ConfigError, match="unknown consistency-ac field.*etaa.*valid:.*demo_fraction.*horizon"):
        split_overrides({"etaa": 1})


def test_mixed_batches_take_the_demo_fraction_from_the_demos():
    demo = ChunkDataset(toy_episodes(n=2), n_obs_steps=1, horizon=2)
    online_eps = toy_episodes(n=2)
    for ep in online_eps:
        ep.observations["x"][:, 1] = 99.0  # marks online windows
    online = ChunkDataset(online_eps, n_obs_steps=1, horizon=2)
    for ds in (demo, online):
        ds.prepare_td(1, 0.9)
    rng = np.random.default_rng(0)
    batch = mixed_batch(demo, online, 64, 0.25, rng)
    from_online = batch["obs"]["x"][:, 0, 1] == 99.0
    assert batch["action"].shape == (64, 2, 2) and batch["reward"].shape == (64,)
    assert from_online.sum() == 48 and (batch["next_obs"]["x"][from_online, 0, 1] == 99.0).all()
    assert not (mixed_batch(demo, None, 64, 0.25, rng)["obs"]["x"][:, 0, 1] == 99.0).any()  # no online data yet


def _agent(reach_demos, **kw):
    cfg, actor_cfg = split_overrides(TINY)
    policy, demos = build_imitation("consistency", reach_demos, actor_cfg, seed=0)
    demos.prepare_td(policy.n_action_steps, cfg.gamma)
    return ConsistencyAC(policy, n_critics=cfg.n_critics, critic_hidden=cfg.critic_hidden, seed=0, **kw), demos


def test_cloning_terms_read_only_the_first_n_bc_rows(reach_demos):
    """The online phase's own episodes train the critic, never the cloning terms: with n_bc = 16,
    rows 16.. may hold any actions and the BC and anchor losses stay bit for bit the same."""
    outs = []
    for junk in (False, True):
        agent, demos = _agent(reach_demos)
        raw = demos.sample(32, np.random.default_rng(0))
        if junk:
            raw["action"][16:] = 0.9 * raw["action"][16:].max()
        gen = torch.Generator().manual_seed(0)
        outs.append(agent.update(agent.actor.batch_to_torch(raw, gen), gen, n_bc=16))
    assert outs[0]["bc_loss"] == outs[1]["bc_loss"] and outs[0]["anchor"] == outs[1]["anchor"]
    assert outs[0]["critic_loss"] != outs[1]["critic_loss"]  # the critic did read them
    agent, _ = _agent(reach_demos)
    with pytest.raises(ValueError, match="n_bc=0"):
        agent.update(agent.actor.batch_to_torch(raw, gen), gen, n_bc=0)


def test_anchor_pulls_the_chunks_the_critic_scores_onto_the_demos(reach_demos):
    """The anchor (TD3+BC's cloning of the action the critic scores) regresses the actor's sampled
    macro action, from the noisiest level as 1-step sampling draws it, onto the demonstrated one:
    trained on the anchor alone, the samples close most of their distance to the demos; the
    consistency loss alone, which barely weighs that level, closes less in as many updates."""
    def distance(steps, **weights):
        agent, demos = _agent(reach_demos, **weights)
        agent.train(demos, steps)
        batch = agent.actor.batch_to_torch(demos.sample(256, np.random.default_rng(7)))
        with torch.no_grad():
            a_pi = agent._sample(agent.actor.encode_obs(batch["obs"]), torch.Generator().manual_seed(1))
        return float((a_pi - batch["action"][:, : agent.k].reshape(256, -1)).pow(2).mean())

    start = distance(0)
    anchor_only = distance(600, eta=0.0, bc_weight=0.0, anchor_weight=1.0)
    bc_only = distance(600, eta=0.0, bc_weight=1.0, anchor_weight=0.0)
    assert anchor_only < 0.3 * start and anchor_only < 0.7 * bc_only, (start, anchor_only, bc_only)


def test_td_fields_hold_the_chunk_return_and_its_discount():
    """prepare_td(n, gamma): per window at t, the discounted reward of the n actions executed from t
    (fewer at the episode's end, never past it), gamma^m or 0 once terminated, and the observation
    m steps on."""
    eps = toy_episodes(n=2, T=5)
    eps[0].rewards[:] = [1, 2, 3, 4, 5]
    eps[1].rewards[:] = [10, 0, 0, 0, 1]
    eps[1].terminated[-1] = True
    ds = ChunkDataset(eps, n_obs_steps=1, horizon=4)
    g = 0.5
    ds.prepare_td(2, g)
    b = ds.get(np.arange(10))
    np.testing.assert_allclose(b["reward"][[0, 3, 4, 5, 8, 9]], [1 + g * 2, 4 + g * 5, 5, 10, g * 1, 1], rtol=1e-6)
    np.testing.assert_allclose(b["discount"][[0, 4, 7, 8, 9]], [g ** 2, g, g ** 2, 0, 0])  # episode 1 terminates
    assert (b["next_obs"]["x"][[0, 4, 5], 0].tolist() == [[2, 0], [5, 0], [2, 1]])


def test_conservative_critic_scores_the_actors_chunks_below_the_demonstrated_ones(reach_demos):
    """cql_weight adds CQL's gap Q(s, a_pi) - Q(s, a_data) to the critic's loss: after the same
    updates (same draws, the actor pulled by the Q term alone), the critic with it scores the actor's
    sampled chunks below the demonstrated ones, where the plain TD critic does not hold them down."""
    def gap(cql_weight):
        agent, demos = _agent(reach_demos, eta=1.0, bc_weight=0.0, anchor_weight=0.0, cql_weight=cql_weight)
        info = agent.train(demos, 300)
        batch = agent.actor.batch_to_torch(demos.sample(256, np.random.default_rng(7)))
        with torch.no_grad():
            feat = agent.actor.encode_obs(batch["obs"])
            a_pi = agent._sample(feat, torch.Generator().manual_seed(1))
            q_pi = agent.critic(feat, a_pi).mean()
            q_data = agent.critic(feat, batch["action"][:, : agent.k].reshape(256, -1)).mean()
        return float(q_pi - q_data), info

    plain, info_plain = gap(0.0)
    conservative, info = gap(5.0)
    assert info_plain["q_gap"] == 0.0 and info["q_gap"] != 0.0  # reported only when the term is on
    assert conservative < plain - 1.0, (plain, conservative)  # measured: -4.1 against +0.02


def test_online_phase_collects_episodes_and_keeps_updating_the_critic(reach_demos):
    """60 env steps at utd 2 after 20 offline updates: 140 updates in all, one completed 50-step
    episode in the online data (the unfinished one is not), evaluations at 0, 30, 60, and the
    critic moved during the online phase."""
    cfg, actor_cfg = split_overrides({**TINY, "online_steps": 60, "utd": 2, "eval_every": 30})
    policy, demos = build_imitation("consistency", reach_demos, actor_cfg, seed=0)
    agent = ConsistencyAC(policy, n_critics=cfg.n_critics, critic_hidden=cfg.critic_hidden, seed=0)
    agent.train(demos, 20)
    before = [p.detach().clone() for p in agent.critic.parameters()]
    tuner = OnlineFinetuner(agent, demos, cfg, "reach", seed=0, eval_episodes=1)
    summary = tuner.run()
    assert agent.updates == 20 + 60 * 2
    assert summary["env_steps"] == 60 and summary["online_episodes"] == 1 and summary["online_transitions"] == 50
    assert len(tuner.online_episodes) == 1 and tuner.online_episodes[0].length == 50
    assert len(tuner.online_data) == 50 and tuner.online_episodes[0].metadata["source"] == "consistency-ac_online"
    assert [r["env_steps"] for r in tuner.rows] == [0, 30, 60]
    assert [r["updates"] for r in tuner.rows] == [20, 80, 140]
    assert [r["online_transitions"] for r in tuner.rows] == [0, 0, 50]
    moved = sum(float((a.detach() - b).abs().sum()) for a, b in zip(agent.critic.parameters(), before))
    assert moved > 0
    ep = tuner.online_episodes[0]
    low, high = np.asarray(ep.metadata["action_low"]), np.asarray(ep.metadata["action_high"])
    assert np.all(ep.actions >= low - 1e-6) and np.all(ep.actions <= high + 1e-6)
    assert np.isfinite(ep.rewards).all() and ep.metadata["reward"] == "dense"


def test_same_seed_same_run_other_seed_other_run(reach_demos, tmp_path):
    def run(seed, name):
        out = tmp_path / name
        r = train_consistency_ac(reach_demos, out, {**TINY, "online_steps": 55, "eval_every": 55}, steps=20,
                                 seed=seed, eval_episodes=1, device="cpu")
        return r["metrics"], load_policy(r["checkpoint"]).state_dict()

    (m1, s1), (m2, s2), (m3, s3) = run(0, "a"), run(0, "b"), run(1, "c")
    assert m1["updates"] == 75 and m1["online_transitions"] == 50
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], rtol=0, atol=0)
    assert m1["critic_loss"] == m2["critic_loss"] and m1["q"] == m2["q"]
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)


def test_train_command_end_to_end_exports_a_policy_eval_runs(reach_demos, tmp_path):
    run = tmp_path / "run"
    sets = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "online_steps": 60, "utd": 1}.items()]
    cmd = [sys.executable, "-m", "serl_ctrl.cli", "train", "--algo", "consistency-ac", "--task", "reach",
           "--demos", str(reach_demos), "--steps", "30", "--eval-episodes", "2", "--eval-every", "30",
           "--out", str(run), "--json", *[a for s in sets for a in ("--set", s)]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["algo"] == "consistency-ac" and 0.0 <= result["success_rate"] <= 1.0
    assert (result["steps"], result["env_steps"], result["updates"], result["eval_seeds"]) == (30, 60, 90, "10000+")
    assert result["policy"] == str(run / "policy.onnx") and result["infer_ms_p50"] > 0
    card = json.loads((run / "policy.json").read_text())
    assert card["algo"] == "consistency-ac" and card["parity_max_abs_diff"] <= 1e-5 and card["sampler_steps"] == 1
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "30", "60"]
    assert (run / "learning_curve.png").stat().st_size > 1000

    from serl_ctrl.runtime import load_policy as load_onnx

    deployed = load_onnx(run / "policy.onnx")
    assert (deployed.spec.horizon, deployed.spec.n_action_steps, deployed.spec.task) == (8, 4, "reach")
    assert deployed.spec.extra["online_steps"] == 60
    ev = subprocess.run([sys.executable, "-m", "serl_ctrl.cli", "eval", "--policy", str(run / "policy.onnx"),
                         "--episodes", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout.strip().splitlines()[-1])["task"] == "reach"

    bad = subprocess.run([*cmd[:cmd.index("--out")], "--out", str(tmp_path / "bad"), "--json", "--set", "utd=0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "utd" in bad.stdout.strip().splitlines()[-1]
    assert not (tmp_path / "bad" / "model.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")
def test_offline_and_online_phases_run_on_cuda_and_leave_a_cpu_policy(reach_demos, tmp_path):
    r = train_consistency_ac(reach_demos, tmp_path / "gpu", {**TINY, "online_steps": 55, "eval_every": 55},
                             steps=20, seed=0, eval_episodes=1, device="cuda")
    m = r["metrics"]
    assert m["updates"] == 75 and m["online_transitions"] == 50 and np.isfinite(m["critic_loss"])
    policy = load_policy(r["checkpoint"])
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in policy.state_dict().values()
               if t.is_floating_point())


class _Killed(Exception):
    pass


def test_run_killed_online_resumes_to_the_same_actor(reach_demos, tmp_path, monkeypatch):
    """Checkpoints every 20 offline updates and at episode ends online; the run dies as its third
    online episode ends (step 150), resumes from the checkpoint at step 100 (taken after that step's
    evaluation had moved the actor's noise generator) and ends with the actor, evaluation rows and
    online episodes of a run that was never interrupted."""
    settings = {**TINY, "online_steps": 160, "eval_every": 50}
    kw = dict(steps=30, seed=0, eval_episodes=1, device="cpu")
    whole = train_consistency_ac(reach_demos, tmp_path / "whole", settings, **kw)

    original = OnlineFinetuner._add_episode

    def dies_on_the_third(self, episode):
        if len(self.online_episodes) == 2:
            raise _Killed
        original(self, episode)

    monkeypatch.setattr(OnlineFinetuner, "_add_episode", dies_on_the_third)
    run = tmp_path / "killed"
    with pytest.raises(_Killed):
        train_consistency_ac(reach_demos, run, settings, checkpoint_every=20, **kw)
    monkeypatch.setattr(OnlineFinetuner, "_add_episode", original)
    assert sorted(p.name for p in (run / "ckpt").glob("ckpt_*.json"))[-1] == "ckpt_000000130.json"  # 30 + 100
    with pytest.raises(FileExistsError, match="--resume"):
        train_consistency_ac(reach_demos, run, settings, checkpoint_every=20, **kw)
    with pytest.raises(Exception, match="seed"):
        train_consistency_ac(reach_demos, run, settings, checkpoint_every=20, resume=True, **{**kw, "seed": 1})
    resumed = train_consistency_ac(reach_demos, run, settings, checkpoint_every=20, resume=True, **kw)

    a, b = load_policy(whole["checkpoint"]).state_dict(), load_policy(resumed["checkpoint"]).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    def rows(folder):
        with open(folder / "metrics.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]

    assert rows(run) == rows(tmp_path / "whole") and len(rows(run)) == 5  # env steps 0, 50, 100, 150, 160
    assert resumed["metrics"]["updates"] == whole["metrics"]["updates"] == 30 + 160
    assert resumed["metrics"]["critic_loss"] == whole["metrics"]["critic_loss"]
    assert len(list((run / "online_episodes").glob("episode_*.npz"))) == 3 and not (run / "ckpt").exists()
