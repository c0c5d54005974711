"""Training on a CUDA GPU: SAC and the imitation policies (skipped where torch sees no GPU).

CI has no GPU; these run on a workstation or a lent GPU machine (``pytest tests/test_cuda.py``).
What they guard: every tensor a trainer makes lands on the run's device, the random draws are
the CPU generators' (so a GPU run sees the same minibatches and noise as a CPU run), checkpoints
and policies leave training as CPU float32, and a GPU-trained run resumes on a CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")


def test_device_names_are_checked():
    from serl_ctrl.utils.device import resolve_device

    assert resolve_device("auto").type == "cuda"
    with pytest.raises(ValueError, match="gpu=.cuda:99.: there are"):
        resolve_device("cuda:99", "gpu")


def test_sac_update_on_cuda_is_compiled_and_bf16_auto():
    import gymnasium as gym

    from serl_ctrl.agents.config import SACConfig
    from serl_ctrl.agents.sac import Learner, SACAgent

    obs = gym.spaces.Box(-1, 1, (6,), np.float32)
    act = gym.spaces.Box(-1, 1, (2,), np.float32)
    agent = SACAgent(obs, act, SACConfig.from_dict({"dtype": "auto", "batch_size": 64,
                                                    "learning_starts": 8}), device="cuda", seed=0)
    assert agent.compute_dtype == "bf16-autocast"
    learner = Learner(agent, seed=0)
    rng = np.random.default_rng(0)
    from serl_ctrl.agents.sac import Transition

    metrics = []
    for i in range(40):
        o, o2 = rng.uniform(-1, 1, 6).astype(np.float32), rng.uniform(-1, 1, 6).astype(np.float32)
        m = learner.add_transition(Transition(o, rng.uniform(-1, 1, 2).astype(np.float32),
                                              float(rng.normal()), o2, False, False, seq=i))
        metrics.append(m)
    assert agent._critic_loss_fn.failed is None and agent._actor_loss_fn.failed is None
    assert all(math.isfinite(v) for v in metrics[-1].values())
    assert next(agent.critic.parameters()).is_cuda
    a = agent.act(np.zeros(6, np.float32))
    assert a.shape == (2,) and isinstance(a, np.ndarray)


def test_sac_run_on_cuda_exports_and_resumes_on_cpu(tmp_path):
    from serl_ctrl.agents.train_sac import RunConfig, train_sac
    from serl_ctrl.data.demos import record_demonstrations
    from serl_ctrl.runtime.onnx_policy import OnnxPolicy

    demos = tmp_path / "demos"
    record_demonstrations("reach", demos, 3, reward="dense", seed=1)
    small = ["sac.hidden_dims=64,64", "sac.n_critics=4", "sac.batch_size=64", "sac.learning_starts=50",
             "sac.random_steps=50"]
    cfg = RunConfig.load(None, {"task": "reach", "reward": "dense", "steps": 300, "demos": str(demos),
                                "eval_every": 300, "eval_episodes": 2, "checkpoint_every": 150,
                                "device": "cuda"}, small)
    result = train_sac(cfg, tmp_path / "run")
    assert result["env_steps"] == 300
    policy = OnnxPolicy(tmp_path / "run" / "policy.onnx")
    from serl_ctrl.envs import make_env

    env = make_env("reach", reward="dense")
    obs, _ = env.reset(seed=0)
    assert np.all(np.isfinite(policy.act(obs)))
    # the same run continues on the CPU from its GPU checkpoint
    more = RunConfig.load(None, {**{k: v for k, v in cfg.to_dict().items() if k != "sac"}, "steps": 400,
                                 "device": "cpu"}, small)
    resumed = train_sac(more, tmp_path / "run", resume=True, export=False)
    assert resumed["env_steps"] == 400


@pytest.mark.parametrize("algo", ["diffusion", "consistency", "bc"])
def test_imitation_trains_on_cuda_like_on_cpu(tmp_path, algo):
    """Same seed, same minibatches and noise: the first losses agree to float rounding, and the
    policy comes back on the CPU."""
    from serl_ctrl.agents.imitation import ChunkDataset, policy_class, train_policy
    from serl_ctrl.data.demos import record_demonstrations
    from serl_ctrl.data.episodes import load_episodes

    demos = tmp_path / "demos"
    record_demonstrations("reach", demos, 4, seed=2)
    episodes = load_episodes(demos)
    klass = policy_class(algo)
    cfg = klass.config_class.from_dict({"batch_size": 32})
    losses = {}
    for device in ("cpu", "cuda"):
        ds = ChunkDataset(episodes, None, cfg.n_obs_steps, cfg.horizon)
        policy = klass.from_dataset(ds, cfg, seed=0)
        out = train_policy(policy, ds, 5, seed=0, log_every=1, device=device)
        losses[device] = [row["loss"] for row in out["history"]]
        assert policy.device.type == "cpu"
        chunk = policy.predict_action({k: np.repeat(v[:1], policy.history_len, 0)
                                       for k, v in episodes[0].observations.items()})
        assert np.all(np.isfinite(chunk))
    np.testing.assert_allclose(losses["cuda"][0], losses["cpu"][0], rtol=1e-3)


def test_consistency_distillation_on_cuda(tmp_path):
    from serl_ctrl.agents.imitation import train_imitation
    from serl_ctrl.data.demos import record_demonstrations

    demos = tmp_path / "demos"
    record_demonstrations("reach", demos, 4, seed=2)
    teacher = train_imitation("diffusion", demos, tmp_path / "teacher", {"batch_size": 32}, steps=5,
                              device="cuda")
    student = train_imitation("consistency", demos, tmp_path / "student",
                              {"batch_size": 32, "teacher": str(tmp_path / "teacher" / "model")}, steps=5,
                              device="cuda")
    assert math.isfinite(student["metrics"]["final_loss"]) and teacher["checkpoint"]
