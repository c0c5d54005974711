"""Running policies: one :class:`Policy` interface over torch and onnxruntime backends.

``load_policy("policies/pickcube_sac_state.onnx")`` or ``load_policy("pickcube_sac_state")`` (a
policy shipped in ``policies/``) gives an :class:`OnnxPolicy`. Importing this package imports
neither torch nor onnxruntime: the backend is imported when a policy is loaded, so the robot side
needs only NumPy and onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from .policy import Policy
from .spec import ObsField, PolicySpec


def load_policy(name_or_path: str | Path, threads: int = 1, adaptive_tau: float | None = None,
                sampler_seed: int | None = None) -> Policy:
    """An exported policy by path (.onnx) or by the name of a policy shipped in policies/
    (``sampler_seed``: see :class:`~serl_ctrl.runtime.onnx_policy.OnnxPolicy`)."""
    from ..paths import find_policy
    from .onnx_policy import OnnxPolicy

    path = find_policy(str(name_or_path))
    return OnnxPolicy(path, threads=threads, adaptive_tau=adaptive_tau, sampler_seed=sampler_seed)


__all__ = ["ObsField", "Policy", "PolicySpec", "load_policy"]
