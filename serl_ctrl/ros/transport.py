"""Transitions and actor weights as std_msgs/UInt8MultiArray (the actor <-> learner transport).

Both directions use the pickle-free layout of :mod:`serl_ctrl.ros.wire`:

* ``transitions`` (actor -> learner): ``Transition.to_arrays()`` (keys ``obs/<key>``,
  ``next_obs/<key>``, ``action``, ``reward``, ``terminated``, ``truncated``, ``seq``,
  ``actor_id``) plus meta ``{"kind": "transition", "policy_version": v}``;
* ``policy/weights`` (learner -> actors, transient-local so late actors get the latest):
  ``Learner.actor_state_dict()`` as float arrays plus meta ``{"kind": "weights",
  "policy_version": v, "task": ..., "obs": ...}``.

Also the two facts actor and learner must agree on: the gym spaces of (task, obs mode) and the
SAC configuration file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import numpy as np
from std_msgs.msg import UInt8MultiArray

from . import wire

__all__ = ["env_spaces", "msg_to_transition", "msg_to_weights", "sac_config", "transition_to_msg",
           "weights_to_msg"]


def _to_msg(payload: bytes) -> UInt8MultiArray:
    import array

    msg = UInt8MultiArray()
    msg.data = array.array("B", payload)
    return msg


def transition_to_msg(transition, policy_version: int = 0) -> UInt8MultiArray:
    return _to_msg(wire.pack(transition.to_arrays(), {"kind": "transition", "policy_version": int(policy_version)}))


def msg_to_transition(msg: UInt8MultiArray):
    """(Transition, meta); raises wire.WireError / ValueError for anything malformed."""
    from ..agents.sac import Transition

    arrays, meta = wire.unpack(msg.data)
    if meta.get("kind") != "transition":
        raise wire.WireError(f"expected a transition, got kind {meta.get('kind')!r}")
    missing = {"action", "reward", "terminated", "truncated", "seq"} - set(arrays)
    if missing:
        raise wire.WireError(f"transition lacks {sorted(missing)}")
    return Transition.from_arrays(arrays), meta


def weights_to_msg(state_dict: Mapping[str, Any], policy_version: int, **meta) -> UInt8MultiArray:
    arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    return _to_msg(wire.pack(arrays, {"kind": "weights", "policy_version": int(policy_version), **meta}))


def msg_to_weights(msg: UInt8MultiArray):
    """(state dict of torch tensors, meta)."""
    import torch

    arrays, meta = wire.unpack(msg.data)
    if meta.get("kind") != "weights":
        raise wire.WireError(f"expected weights, got kind {meta.get('kind')!r}")
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, meta


@lru_cache(maxsize=8)
def env_spaces(task: str, obs: str):
    """(observation_space, action_space) of the Panda environment for ``task`` and ``obs`` mode."""
    from ..envs.panda_env import PandaEnv

    env = PandaEnv(task=task, backend="mujoco", obs=obs)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def sac_config(path: str):
    """The SAC configuration from a YAML file ('' for the defaults)."""
    from pathlib import Path

    from ..agents.config import SACConfig

    return SACConfig.from_yaml(Path(path)) if path else SACConfig()
