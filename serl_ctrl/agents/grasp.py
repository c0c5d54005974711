"""HIL-SERL's discrete gripper critic: open / stay / close chosen by a DQN, the arm by SAC.

With ``sac.gripper_critic`` the SAC actor drives only the arm dimensions of the action; the last
dimension (the gripper) is chosen by a separate critic ``Q(s, c)`` over three classes ``c``
(Luo et al. 2024, HIL-SERL). A continuous gripper action explores poorly (a grasp needs the
command held for many steps) and the Gaussian's entropy bonus keeps it dithering; a discrete
choice with a small penalty for every change holds the gripper still unless changing it pays.

The pieces here are small pure functions on tensors (shared by learning, acting and the exported
graph, so all three use one rule) and the critic module:

* classes ``OPEN = 0``, ``STAY = 1``, ``CLOSE = 2`` (``class - 1`` is the direction, as HIL-SERL's
  ``{-1, 0, 1}``);
* :func:`gripper_closed` reads the gripper state from the observation, :func:`command_to_class`
  labels a stored action, :func:`class_to_command` turns a class into the env's command;
* :func:`double_dqn_target`: ``r' + gamma (1 - done) Q_target(s', argmax_c Q_online(s', c))``;
* :func:`grasp_rewards`: the task reward minus ``sac.grasp_penalty`` when the gripper changes.
  As in HIL-SERL the penalty enters only the grasp critic's reward, not the arm critic's.

What "stay" means, and why the gripper state is read from the observation
-------------------------------------------------------------------------
Our gripper action is an *absolute* opening command (``-1`` open ... ``+1`` closed,
``serl_ctrl/envs/actions.py``), not a change. "Stay" must therefore repeat the command the gripper
is under, and the agent has to know it from its input (else ``Q(s, stay)`` is not a function of
``s``). Two ways were possible:

1. a wrapper that adds the last command as an observation key: exact, but the deployed policy
   would then need an input that neither ``serl-ctrl eval`` (a plain task env) nor the ROS policy
   node's ``ObservationBuilder`` can produce;
2. the ``gripper`` observation (finger opening / 8 cm) that every env, dataset and the ROS node
   already provide. In our simulators the fingers settle within one control step (measured at
   10 Hz: 1.0 -> 0.0 after one step when empty, 0.48 on the 4 cm cube, back to 1.0 after opening),
   so after a +-1 command the measured opening says which it was: closed iff the opening is below
   ``CLOSED_BELOW`` (0.9, i.e. 7.2 cm).

We use (2): the state is a function of the observation, so labels in replay, acting and the
exported ONNX graph apply the same rule, demonstrations need no extra key, and deployment is
unchanged. It requires that executed gripper commands are fully open or closed: the agent only
emits +-1, and uniformly random exploration actions are snapped to +-1
(``SACAgent.snap_gripper``). A class that would change nothing (CLOSE when closed, OPEN when open)
executes the same command as STAY, so it never appears in labelled data and its Q-value would never
be trained; it is masked out of every argmax (acting, the double-DQN target, the exported graph).

Limitation: a gripper that needs several control steps to move (a real hand is slower than our
simulated one) still reads its old state during the motion, so "stay" then repeats the old command
and a change has to be chosen again until the fingers have moved; the penalty is charged each time.
A real-robot deployment with a slow gripper would want option 1 with the ROS node supplying the key.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from serl_ctrl.nn.mlp import MLP, float32_layer

__all__ = ["OPEN", "STAY", "CLOSE", "NUM_CLASSES", "CLOSED_BELOW", "GRIPPER_KEY", "GraspCritic",
           "gripper_closed", "valid_classes", "greedy_class", "class_to_command", "command_to_class",
           "double_dqn_target", "grasp_rewards", "toggle_class"]

OPEN, STAY, CLOSE = 0, 1, 2
NUM_CLASSES = 3
#: the gripper counts as closed while its opening (fraction of 8 cm) is below this: an open hand
#: reads 1.0, a closed one 0.0, or the object's width when it holds one (the 4 cm cube: 0.5)
CLOSED_BELOW = 0.9
#: the observation key with the measured finger opening (fraction of the maximum)
GRIPPER_KEY = "gripper"


class GraspCritic(nn.Module):
    """``features -> (B, 3)`` Q-values of OPEN, STAY, CLOSE: one MLP (LayerNorm, as the critics).

    The output layer runs in float32 even under bf16 autocast, as the other critics' heads."""

    def __init__(self, feat_dim: int, hidden_dims: Tuple[int, ...], *, layer_norm: bool = True,
                 act: str = "relu") -> None:
        super().__init__()
        self.trunk = MLP(feat_dim, hidden_dims, None, layer_norm=layer_norm, act=act)
        self.head = nn.Linear(self.trunk.out_dim, NUM_CLASSES)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return float32_layer(self.head, self.trunk(feat)).float()


def gripper_closed(opening: torch.Tensor) -> torch.Tensor:
    """``(B, 1)`` measured opening (the ``gripper`` observation) -> ``(B,)`` bool: closed?"""
    return opening.reshape(opening.shape[0], -1)[:, 0] < CLOSED_BELOW


def valid_classes(closed: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` bool: STAY always; CLOSE only when open; OPEN only when closed."""
    return torch.stack([closed, torch.ones_like(closed), ~closed], dim=-1)


def greedy_class(q: torch.Tensor, closed: torch.Tensor) -> torch.Tensor:
    """``argmax`` of ``q (B, 3)`` over the classes valid in each row's gripper state."""
    return torch.where(valid_classes(closed), q, torch.full_like(q, float("-inf"))).argmax(dim=-1)


def toggle_class(closed: torch.Tensor) -> torch.Tensor:
    """The class that changes the gripper state: OPEN when closed, CLOSE when open."""
    return torch.where(closed, torch.full_like(closed, OPEN, dtype=torch.long),
                       torch.full_like(closed, CLOSE, dtype=torch.long))


def class_to_command(cls: torch.Tensor, closed: torch.Tensor) -> torch.Tensor:
    """The absolute gripper command (-1 open, +1 closed) of class ``cls`` in state ``closed``;
    STAY repeats the state's own command. Float ``(B,)``."""
    hold = closed.to(torch.float32) * 2.0 - 1.0
    return torch.where(cls == STAY, hold, (cls - 1).to(torch.float32))


def command_to_class(command: torch.Tensor, closed: torch.Tensor) -> torch.Tensor:
    """The class of an executed absolute command (``> 0`` closes) in state ``closed``: STAY when
    it asks for the state the gripper is in, else CLOSE or OPEN. Long ``(B,)``."""
    want_closed = command > 0
    change = torch.where(want_closed, torch.full_like(closed, CLOSE, dtype=torch.long),
                         torch.full_like(closed, OPEN, dtype=torch.long))
    return torch.where(want_closed == closed, torch.full_like(change, STAY), change)


def grasp_rewards(rewards: torch.Tensor, classes: torch.Tensor, penalty: float) -> torch.Tensor:
    """The grasp critic's reward: ``rewards - penalty`` where the class changes the gripper."""
    return rewards - penalty * (classes != STAY).to(rewards.dtype)


def double_dqn_target(q_next_online: torch.Tensor, q_next_target: torch.Tensor,
                      closed_next: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
                      gamma: float) -> torch.Tensor:
    """Double DQN (van Hasselt et al.): the online critic picks the next class (among the valid
    ones), the target critic values it: ``r + gamma (1 - terminated) Q_t(s', argmax Q(s', .))``."""
    best = greedy_class(q_next_online, closed_next)
    value = q_next_target.gather(-1, best.unsqueeze(-1)).squeeze(-1)
    return rewards + gamma * (1.0 - terminated) * value
