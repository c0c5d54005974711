"""Run a policy's torch module behind the same interface as the ONNX policy.

Used to evaluate a policy straight after training and to check export parity: the module takes
a dict of batched tensors (uint8 images stay uint8; the module converts them itself) and returns
``(B, action_dim)`` or ``(B, horizon, action_dim)`` actions in environment units.
"""

from __future__ import annotations

import numpy as np
import torch

from .policy import Policy
from .spec import PolicySpec


class TorchPolicy(Policy):
    def __init__(self, module: torch.nn.Module, spec: PolicySpec, threads: int | None = None,
                 adaptive_tau: float | None = None) -> None:
        super().__init__(spec, adaptive_tau)
        self.module = module.eval()
        if threads is not None:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def _infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obs.items()}
        return self.module(tensors).float().numpy()
