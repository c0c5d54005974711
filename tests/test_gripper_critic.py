"""HIL-SERL's discrete gripper critic (``sac.gripper_critic``): the double-DQN target, the grasp
penalty, what "stay" executes, config and space validation, ONNX parity of the deployed policy and
exact checkpoint resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")

from serl_ctrl.agents import grasp  # noqa: E402
from serl_ctrl.agents.checkpoint import (latest_checkpoint, load_checkpoint,  # noqa: E402
                                         read_actor_state, save_checkpoint)
from serl_ctrl.agents.config import ConfigError, SACConfig  # noqa: E402
from serl_ctrl.agents.grasp import CLOSE, OPEN, STAY  # noqa: E402
from serl_ctrl.agents.sac import Learner, SACAgent, Transition  # noqa: E402
from serl_ctrl.data.replay import ReplayBuffer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class GripperPointEnv(gym.Env):
    """Move a point to the origin with (dx, dy); the last action dim is an absolute gripper
    command whose measured opening follows at once (> 0: closed, 0.0; else open, 1.0), as the
    simulated Panda's fingers settle within one control step. Closing near the origin pays."""

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 10):
        self.horizon = horizon
        self.observation_space = gym.spaces.Dict({
            "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            "gripper": gym.spaces.Box(0.0, 1.0, (1,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    def _obs(self):
        return {"pos": self.pos.astype(np.float32), "gripper": np.array([self.opening], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.opening, self.t = self.np_random.uniform(-1, 1, 2), 1.0, 0
        return self._obs(), {}

    def step(self, action):
        a = np.asarray(action, np.float64)
        self.pos = np.clip(self.pos + 0.2 * a[:2], -1, 1)
        self.opening = 0.0 if a[2] > 0 else 1.0
        self.t += 1
        dist = float(np.linalg.norm(self.pos))
        return self._obs(), -dist + 0.5 * (self.opening < 0.5 and dist < 0.3), False, \
            self.t >= self.horizon, {}


def tiny_cfg(**kw):
    # compile=False: these tests check behaviour; compiling costs seconds per agent
    base = dict(hidden_dims=(32, 32), batch_size=8, utd=2, learning_starts=8, random_steps=8,
                compile=False, gripper_critic=True)
    base.update(kw)
    return SACConfig.from_dict(base)


def rollout(env, agent, n, seed=0):
    """n transitions with seeded random actions, the gripper snapped to +-1 as in training."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for i in range(n):
        a = agent.snap_gripper(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        nxt, r, term, trunc, _ = env.step(a)
        out.append(Transition(obs, a, float(r), nxt, term, trunc, seq=i))
        obs = env.reset()[0] if term or trunc else nxt
    return out


def set_grasp_preference(critic: grasp.GraspCritic, q: tuple) -> None:
    """Make the critic output exactly ``q`` (OPEN, STAY, CLOSE) for every input."""
    with torch.no_grad():
        critic.head.weight.zero_()
        critic.head.bias.copy_(torch.tensor(q, dtype=torch.float32))


# ------------------------------------------------------------------------------ the target


def test_double_dqn_target_on_a_hand_built_case():
    """Online critic picks the next class among the valid ones, the target critic values it."""
    q_online = torch.tensor([[1.0, 5.0, 3.0],    # open: STAY (5) beats CLOSE (3)
                             [2.0, 0.0, 9.0],    # closed: CLOSE (9) is masked -> OPEN (2)
                             [4.0, 1.0, 0.0]])   # closed: OPEN; terminal row
    q_target = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0], [70.0, 80.0, 90.0]])
    closed_next = torch.tensor([False, True, True])
    rewards, terminated = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    got = grasp.double_dqn_target(q_online, q_target, closed_next, rewards, terminated, 0.9)
    # not max over the target (30, 60, 90), not the masked argmax of the target either
    torch.testing.assert_close(got, torch.tensor([1.0 + 0.9 * 20.0, 2.0 + 0.9 * 40.0, 3.0]))


def test_agent_grasp_loss_uses_online_argmax_and_target_value():
    """The agent's loss is (Q(s, c) - [r_g + gamma Q_t(s', argmax_c' Q(s', c'))])^2, recomputed
    here by hand from the two critics' outputs, with their weights made to disagree. In float32:
    the hand computation runs the critics outside autocast."""
    env = GripperPointEnv()
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(dtype="float32"), seed=0)
    with torch.no_grad():
        for p in agent.target_grasp_critic.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    ts = rollout(env, agent, 16, seed=1)
    obs = {k: torch.as_tensor(np.stack([t.obs[k] for t in ts])) for k in ("gripper", "pos")}
    nxt = {k: torch.as_tensor(np.stack([t.next_obs[k] for t in ts])) for k in ("gripper", "pos")}
    actions = torch.as_tensor(np.stack([t.action for t in ts]))
    rewards = torch.tensor([t.reward for t in ts], dtype=torch.float32)
    term = torch.zeros(16)
    labels = agent._grasp_labels(obs, nxt, actions, rewards)
    _, _, _, feat, g_loss, _ = agent._critic_grasp_loss(
        obs, actions[:, :2], rewards, nxt, term, torch.randn(16, 2), torch.tensor([0, 1]),
        torch.tensor(0.01), *labels)
    classes, g_rewards, closed_next = labels
    with torch.no_grad():
        f_next = agent.encoder(nxt)
        q_on, q_t = agent.grasp_critic(f_next).numpy(), agent.target_grasp_critic(f_next).numpy()
        q = agent.grasp_critic(agent.encoder(obs)).numpy()
    expected = []
    for i in range(16):
        valid = [STAY] + ([OPEN] if closed_next[i] else [CLOSE])
        best = max(valid, key=lambda c: q_on[i, c])
        target = float(g_rewards[i]) + 0.99 * q_t[i, best]
        expected.append((q[i, int(classes[i])] - target) ** 2)
    assert float(g_loss.detach()) == pytest.approx(float(np.mean(expected)), rel=1e-5)


# ------------------------------------------------------------------------------ labels and penalty


def test_labels_and_penalty_on_hand_built_rows():
    env = GripperPointEnv()
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(grasp_penalty=0.05), seed=0)
    opening = torch.tensor([[1.0], [1.0], [0.0], [0.48], [0.48], [0.95]])
    command = torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0, 1.0])
    actions = torch.cat([torch.zeros(6, 2), command[:, None]], dim=1)
    rewards = torch.arange(6, dtype=torch.float32)
    obs = {"gripper": opening, "pos": torch.zeros(6, 2)}
    classes, g_rewards, closed_next = agent._grasp_labels(obs, obs, actions, rewards)
    assert classes.tolist() == [STAY, CLOSE, STAY, OPEN, STAY, CLOSE]
    torch.testing.assert_close(g_rewards, rewards - 0.05 * torch.tensor([0., 1, 0, 1, 0, 1]))
    assert closed_next.tolist() == [False, False, True, True, True, False]


def test_penalty_exactly_when_the_panda_gripper_changes_state():
    """On PickCube (the expert closes on the cube, then the gripper opens and closes in the
    air): a transition is penalised exactly when the measured gripper state differs between its
    observation and the next, i.e. the measured state follows the command within one step."""
    from serl_ctrl.envs import make_env

    env = make_env("pickcube", obs="state", reward="dense")
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(), seed=0)
    base = env.unwrapped
    expert = base.task.expert()
    expert.reset()
    obs, _ = env.reset(seed=1)
    rows = []
    script = [None] * 18 + [-1.0, -1.0, 1.0, 1.0, -1.0, 1.0]  # None: the expert's action
    for g in script:
        move, _ = expert.act(base.task_state())
        a = np.array([*move[:3], move[3] if g is None else 0.0], np.float32)
        if g is not None:
            a[:3], a[3] = 0.0, g
        nxt, r, *_ = env.step(a)
        rows.append((obs, a, r, nxt))
        obs = nxt
    env.close()
    stack = lambda i: {k: torch.as_tensor(np.stack([row[i][k] for row in rows]))  # noqa: E731
                       for k in ("gripper",)}
    actions = torch.as_tensor(np.stack([row[1] for row in rows]))
    rewards = torch.tensor([row[2] for row in rows], dtype=torch.float32)
    classes, g_rewards, _ = agent._grasp_labels(stack(0), stack(3), actions, rewards)
    changed = grasp.gripper_closed(stack(0)["gripper"]) != grasp.gripper_closed(stack(3)["gripper"])
    assert changed.sum() >= 4 and (classes == OPEN).any() and (classes == CLOSE).any()
    assert (classes != STAY).tolist() == changed.tolist()
    torch.testing.assert_close(g_rewards, rewards - 0.02 * changed.float())
    held = [float(row[3]["gripper"][0]) for row in rows[:18]]
    assert min(held) > 0.3 and held[-1] < grasp.CLOSED_BELOW  # closed on the cube, not on air


# ------------------------------------------------------------------------------ acting


@pytest.mark.parametrize("prefer, expected", [
    ((0.0, 10.0, 0.0), {1.0: -1.0, 0.0: 1.0, 0.48: 1.0}),    # STAY keeps the measured state
    ((0.0, 1.0, 10.0), {1.0: 1.0, 0.0: 1.0, 0.48: 1.0}),     # CLOSE; when closed (masked) STAY
    ((10.0, 1.0, 0.0), {1.0: -1.0, 0.0: -1.0, 0.48: -1.0}),  # OPEN; when open (masked) STAY
    ((0.0, 1.0, 10.0 + 1e-3), {1.0: 1.0, 0.0: 1.0}),         # a masked class never wins
])
def test_stay_keeps_the_previous_command(prefer, expected):
    """'stay' executes the command the gripper is under (read from its opening: open 1.0,
    closed 0.0, closed on the 4 cm cube 0.48); the same in ``act`` and the exported module."""
    env = GripperPointEnv()
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(grasp_epsilon=0.0), seed=0)
    set_grasp_preference(agent.grasp_critic, prefer)
    policy = agent.policy_state()
    for opening, command in expected.items():
        obs = {"pos": np.array([0.3, -0.2], np.float32), "gripper": np.array([opening], np.float32)}
        for deterministic in (True, False):
            a = agent.act(obs, deterministic=deterministic)
            assert a.shape == (3,) and a[2] == command
        with torch.no_grad():
            out = policy({k: torch.as_tensor(v[None]) for k, v in obs.items()})
        assert out[0, 2].item() == command
        np.testing.assert_allclose(out[0].numpy(), agent.act(obs, deterministic=True), atol=1e-6)


def test_epsilon_explores_only_in_training_and_snapping():
    env = GripperPointEnv()
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(grasp_epsilon=1.0), seed=0)
    set_grasp_preference(agent.grasp_critic, (0.0, 10.0, 0.0))
    obs = {"pos": np.zeros((200, 2), np.float32), "gripper": np.ones((200, 1), np.float32)}
    assert set(agent.act(obs, deterministic=True)[:, 2]) == {-1.0}
    g = agent.act(obs)[:, 2]
    assert set(g) == {-1.0, 1.0} and 60 < (g > 0).sum() < 140  # half stay, half change
    a = agent.snap_gripper(np.array([[0.1, 0.2, 0.3], [0.1, 0.2, -0.01]], np.float32))
    np.testing.assert_array_equal(a, np.array([[0.1, 0.2, 1.0], [0.1, 0.2, -1.0]], np.float32))
    plain = SACAgent(env.observation_space, env.action_space, tiny_cfg(gripper_critic=False))
    x = np.array([0.1, 0.2, 0.3], np.float32)
    assert plain.snap_gripper(x) is x and plain.actor.head.out_features == 6
    assert agent.actor.head.out_features == 4 and agent.target_entropy == -1.0


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("data, field", [
    ({"gripper_critic": "yes"}, "sac.gripper_critic"),
    ({"grasp_penalty": -0.1}, "sac.grasp_penalty"),
    ({"grasp_penalty": "a lot"}, "sac.grasp_penalty"),
    ({"grasp_epsilon": 1.5}, "sac.grasp_epsilon"),
])
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        SACConfig.from_dict(data)
    assert SACConfig.from_overrides(["sac.gripper_critic=true"]).gripper_critic is True


def test_spaces_without_a_gripper_observation_are_refused():
    box = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    with pytest.raises(ValueError, match="sac.gripper_critic.*'gripper'"):
        SACAgent(box, box, tiny_cfg())
    env = GripperPointEnv()
    with pytest.raises(ValueError, match="sac.gripper_critic.*>= 2 action dims"):
        SACAgent(env.observation_space, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), tiny_cfg())


# ------------------------------------------------------------------------------ export


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exported_policy_matches_torch_and_runs_in_the_runtime(tmp_path):
    """The deployed ONNX maps observation -> full env action (argmax class, 'stay' from the
    observed opening); torch and onnxruntime agree to 1e-5 on random and recorded observations
    of both gripper states, and the runtime's OnnxPolicy acts like ``agent.act``."""
    pytest.importorskip("onnxruntime")
    from serl_ctrl.export.onnx_export import export_onnx
    from serl_ctrl.runtime.onnx_policy import OnnxPolicy
    from serl_ctrl.runtime.spec import PolicySpec

    env = GripperPointEnv()
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(), seed=0)
    learner = Learner(agent, seed=0)
    learner.add_transitions(rollout(env, agent, 20, seed=3))  # some updates: non-trivial weights
    spec = PolicySpec.from_spaces(env.observation_space, env.action_space, algo="sac")
    recorded = [{"pos": np.array([[x, -x]], np.float32), "gripper": np.array([[o]], np.float32)}
                for x in (-0.5, 0.1, 0.7) for o in (0.0, 0.48, 0.89, 0.91, 1.0)]
    path = tmp_path / "policy.onnx"
    report = export_onnx(agent.policy_state(), spec, path, recorded_obs=recorded)
    assert report.parity_max_abs_diff <= 1e-5
    policy = OnnxPolicy(path, verify_card=False)
    commands = set()
    for obs in recorded:
        single = {k: v[0] for k, v in obs.items()}
        policy.reset()
        got = policy.act(single)
        np.testing.assert_allclose(got, agent.act(single, deterministic=True), atol=1e-5)
        commands.add(float(got[2]))
    assert commands <= {-1.0, 1.0}


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_resume_is_bit_identical(tmp_path):
    """Grasp critic, its target and its optimizer are saved: a resumed learner makes exactly the
    updates of one never interrupted; the exported weights include the grasp critic."""
    env = GripperPointEnv()
    cfg = tiny_cfg(grasp_epsilon=0.3)
    probe = SACAgent(env.observation_space, env.action_space, cfg)
    ts, demo_ts = rollout(env, probe, 30, seed=1), rollout(env, probe, 20, seed=2)

    def build(seed):
        agent = SACAgent(env.observation_space, env.action_space, cfg, seed=seed)
        demo = ReplayBuffer(env.observation_space, env.action_space, capacity=64)
        for t in demo_ts:
            demo.add(t.obs, t.action, t.reward, t.next_obs, t.terminated, t.truncated)
        online = ReplayBuffer(env.observation_space, env.action_space, capacity=24)
        return Learner(agent, online, demo, seed=seed)

    straight = build(0)
    straight.add_transitions(ts[:20])
    save_checkpoint(tmp_path, straight)
    m_straight = straight.add_transitions(ts[20:])
    obs = ts[-1].next_obs
    a_straight = straight.agent.act({k: np.repeat(v[None], 64, 0) for k, v in obs.items()})

    resumed = build(seed=7)  # different init: everything must come from the checkpoint
    load_checkpoint(latest_checkpoint(tmp_path), resumed)
    m_resumed = resumed.add_transitions(ts[20:])
    assert m_resumed == m_straight and "grasp_loss" in m_straight[-1]
    a_resumed = resumed.agent.act({k: np.repeat(v[None], 64, 0) for k, v in obs.items()})
    np.testing.assert_array_equal(a_resumed, a_straight)  # acting RNG (epsilon) restored too
    ss, sr = straight.agent.state_dict(), resumed.agent.state_dict()
    for part in ("grasp_critic", "target_grasp_critic"):
        assert all(torch.equal(ss[part][k], sr[part][k]) for k in ss[part])
    for a, b in zip(ss["grasp_opt"]["state"].values(), sr["grasp_opt"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    weights, _ = read_actor_state(tmp_path)
    assert any(k.startswith("grasp_critic.") for k in weights)
    fresh = SACAgent(env.observation_space, env.action_space, cfg, seed=5)
    fresh.load_actor_state_dict(weights)
    assert all(torch.equal(v, weights[f"grasp_critic.{k}"])
               for k, v in fresh.grasp_critic.state_dict().items())


def test_training_loop_stores_only_full_gripper_commands():
    """Random exploration is snapped to +-1 and the agent emits +-1: every stored gripper command
    is one whose class the measured state identifies."""
    from serl_ctrl.agents.sac import train_online

    env = GripperPointEnv()
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(grasp_epsilon=0.5), seed=0)
    learner = Learner(agent, seed=0)
    train_online(env, learner, 24, seed=0)
    stored = learner.online.stored_frames(["gripper"])["gripper"]
    actions = np.stack([learner.online.transition(i)["actions"] for i in range(len(learner.online))])
    assert set(np.unique(actions[..., -1])) == {-1.0, 1.0} and set(np.unique(stored)) <= {0.0, 1.0}
    assert learner.policy_version == 24 - 8 + 1


def test_exploring_actor_versions_refuse_the_gripper_critic_clearly():
    """The distributed actor's exploration graph (mean/log_std of every action dim) does not
    cover a discrete gripper yet: building it fails at once, naming the option."""
    pytest.importorskip("onnx")
    from serl_ctrl.export.versions import ExplorationModule

    env = GripperPointEnv()
    agent = SACAgent(env.observation_space, env.action_space, tiny_cfg(), seed=0)
    with pytest.raises(ValueError, match="sac.gripper_critic"):
        ExplorationModule.from_agent(agent)
