"""Act with an exported SAC policy version, exploring: what the RL actor runs.

A policy version (``serl_ctrl.export.versions``) is an ordinary serl_ctrl ONNX policy whose graph
has two more outputs after the deployed ``action``: the tanh-Gaussian's pre-tanh ``mean`` and
``log_std``. :class:`ExplorationPolicy` loads one from bytes (as it arrives over ROS), checks its
sha256 before anything else, and acts::

    policy = ExplorationPolicy(data, sha256=meta["sha256"])
    a = policy.act(obs, rng)      # tanh(mean + exp(log_std) * eps) * scale + center, eps ~ N(0, I)
    a = policy.act(obs)           # no rng: the deterministic action (the graph's ``action``)

Imports NumPy, onnxruntime and the spec module only (never torch; a test proves it in a fresh
interpreter), so an actor on the robot PC needs no training stack to act.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from .onnx_policy import open_session

OUTPUTS = ("action", "mean", "log_std")
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}

__all__ = ["ExplorationPolicy", "OUTPUTS", "PolicyIntegrityError"]


class PolicyIntegrityError(ValueError):
    """The bytes are not the policy they claim to be (sha256 mismatch)."""


class ExplorationPolicy:
    """An exported SAC policy version run by onnxruntime, with its Gaussian for exploration.

    Args:
        data: the .onnx file's bytes.
        sha256: the expected hex digest; a mismatch raises :class:`PolicyIntegrityError` before
            the bytes are parsed. None skips the check.
        threads: onnxruntime intra-op threads.

    Raises ValueError for a file that is not a serl_ctrl policy with ``mean`` and ``log_std``
    outputs, or whose inputs do not match its spec.
    """

    def __init__(self, data: bytes, sha256: str | None = None, threads: int = 1) -> None:
        data = bytes(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != self.sha256:
            raise PolicyIntegrityError(f"sha256 {self.sha256[:16]}... of the received policy does not match the "
                                       f"announced {str(sha256)[:16]}...: corrupted or truncated")
        self.session, self.spec = open_session(data, threads, "received policy")
        if self.spec.horizon != 1 or self.spec.n_obs_steps != 1 or self.spec.sampler is not None:
            raise ValueError("an exploration policy maps one observation to one action (a SAC actor)")
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs[:3] != list(OUTPUTS):
            raise ValueError(f"the policy's outputs are {outputs}; an exploring actor needs {list(OUTPUTS)} "
                             "(export it with serl_ctrl.export.versions)")
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected = self.spec.graph_inputs()
        if set(inputs) != set(expected):
            raise ValueError(f"graph inputs {sorted(inputs)} do not match the spec {sorted(expected)}")
        for key, (shape, dtype) in expected.items():
            if _ORT_DTYPES.get(inputs[key].type) != dtype:
                raise ValueError(f"input {key!r} is {inputs[key].type}, the spec says {dtype}")
        self.policy_version = int(self.spec.extra.get("policy_version", -1))
        self.low = np.asarray(self.spec.action_low, np.float32)
        self.high = np.asarray(self.spec.action_high, np.float32)
        self.scale = (self.high - self.low) / 2.0
        self.center = (self.high + self.low) / 2.0

    def outputs(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(action, mean, log_std) for one observation, each ``(action_dim,)``."""
        checked = self.spec.check_obs(obs)
        feeds = {k: v[None] for k, v in checked.items()}
        action, mean, log_std = self.session.run(list(OUTPUTS), feeds)
        return action[0], mean[0], log_std[0]

    def act(self, obs: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
        """A sample of the squashed Gaussian (with ``rng``) or the deterministic action (without),
        in environment units, clipped to the action space."""
        action, mean, log_std = self.outputs(obs)
        if rng is not None:
            u = mean + np.exp(log_std) * rng.standard_normal(mean.shape).astype(np.float32)
            action = np.tanh(u) * self.scale + self.center
        return np.clip(action, self.low, self.high).astype(np.float32)
