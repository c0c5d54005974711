"""Transitions and policy versions as std_msgs/UInt8MultiArray (the actor <-> learner transport).

Both directions use the pickle-free layout of :mod:`serl_ctrl.ros.wire`:

* ``transitions`` (actor -> learner): the layout of ``Transition.to_arrays()`` (keys
  ``obs/<key>``, ``next_obs/<key>``, ``action``, ``reward``, ``terminated``, ``truncated``,
  ``seq``, ``actor_id``) plus meta ``{"kind": "transition", "policy_version": v, "reward":
  "sparse"|"dense", "session": <the actor process's random id>}``. :func:`transition_msg` packs
  it from NumPy values (the actor imports no torch); :func:`msg_to_transition` gives the learner
  a ``Transition``;
* ``policy/onnx`` (learner -> actors, transient-local so late actors get the latest): one policy
  version as the bytes of an ONNX file (``serl_ctrl.export.versions``; outputs ``action``,
  ``mean``, ``log_std``) in the array ``onnx`` (uint8), plus meta ``{"kind": "policy_onnx",
  "policy_version": v, "sha256": ..., "task": ..., "obs": ..., "reward": ..., "learner_id": ...,
  "env_steps": ...}``. The receiver checks the sha256 before loading
  (``serl_ctrl.runtime.exploration``).

Also the two facts actor and learner must agree on: the gym spaces of (task, obs mode) and the
SAC configuration file (the learner's; the actor runs whatever graph arrives).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import numpy as np
from std_msgs.msg import UInt8MultiArray

from . import wire

__all__ = ["env_spaces", "msg_to_onnx", "msg_to_transition", "onnx_to_msg", "sac_config", "transition_msg",
           "transition_to_msg"]


def _to_msg(payload: bytes) -> UInt8MultiArray:
    import array

    msg = UInt8MultiArray()
    msg.data = array.array("B", payload)
    return msg


def transition_arrays(obs: Mapping[str, Any], action, reward: float, next_obs: Mapping[str, Any], terminated: bool,
                      truncated: bool, seq: int, actor_id: int = 0) -> dict[str, np.ndarray]:
    """The flat array layout of ``Transition.to_arrays()`` from NumPy values (no torch import)."""
    out: dict[str, np.ndarray] = {}
    for name, value in (("obs", obs), ("next_obs", next_obs)):
        out.update({f"{name}/{k}": np.asarray(x) for k, x in value.items()})
    out["action"] = np.asarray(action, dtype=np.float32)
    out["reward"] = np.asarray(reward, dtype=np.float32)
    out["terminated"] = np.asarray(bool(terminated))
    out["truncated"] = np.asarray(bool(truncated))
    out["seq"] = np.asarray(int(seq), dtype=np.int64)
    out["actor_id"] = np.asarray(int(actor_id), dtype=np.int64)
    return out


def transition_msg(arrays: Mapping[str, np.ndarray], policy_version: int = 0, **meta) -> UInt8MultiArray:
    """A transition message from :func:`transition_arrays` (``meta``: reward mode, session)."""
    return _to_msg(wire.pack(arrays, {"kind": "transition", "policy_version": int(policy_version), **meta}))


def transition_to_msg(transition, policy_version: int = 0, **meta) -> UInt8MultiArray:
    """A transition message from a ``serl_ctrl.agents.sac.Transition``."""
    return transition_msg(transition.to_arrays(), policy_version, **meta)


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


def onnx_to_msg(data: bytes, policy_version: int, sha256: str, **meta) -> UInt8MultiArray:
    """One policy version: the ONNX file's bytes with its version and sha256 (plus ``meta``)."""
    return _to_msg(wire.pack({"onnx": np.frombuffer(data, dtype=np.uint8)},
                             {"kind": "policy_onnx", "policy_version": int(policy_version), "sha256": str(sha256),
                              **meta}))


def msg_to_onnx(msg: UInt8MultiArray) -> tuple[bytes, dict]:
    """(ONNX bytes, meta) of a policy version; the caller checks ``meta["sha256"]`` (see
    ``serl_ctrl.runtime.exploration.ExplorationPolicy``). Raises wire.WireError if malformed."""
    arrays, meta = wire.unpack(msg.data)
    if meta.get("kind") != "policy_onnx":
        raise wire.WireError(f"expected a policy version (policy_onnx), got kind {meta.get('kind')!r}")
    if "onnx" not in arrays or arrays["onnx"].dtype != np.uint8 or arrays["onnx"].ndim != 1:
        raise wire.WireError("a policy version carries its file as the uint8 array 'onnx'")
    for key in ("policy_version", "sha256"):
        if key not in meta:
            raise wire.WireError(f"a policy version lacks meta {key!r}")
    return arrays["onnx"].tobytes(), meta


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
