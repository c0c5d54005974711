"""DDIM sampling in NumPy around a denoiser graph: the runtime side of a ``--sampler runtime`` export.

A diffusion policy can be exported two ways. The default graph unrolls a fixed number of DDIM steps
(one ``session.run`` per chunk). The runtime-sampler graph holds only the denoiser, and this loop
calls it once per step, driven by the schedule constants in the file's
:class:`~serl_ctrl.runtime.spec.SamplerSpec`: the same network can then be sampled with noise drawn
at run time. The arithmetic follows ``serl_ctrl.agents.diffusion.ddim_step`` operation for
operation, in float32, so a chunk matches the torch sampler's to float rounding (tested to 1e-5).

Only NumPy here: this module runs on the robot.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .spec import SamplerSpec

Denoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``model_output = denoise(noisy_action (1, H, A) float32, timestep (1,) float32)``."""


def ddim_step(x: np.ndarray, model_output: np.ndarray, abar_t: float, abar_prev: float, clip_sample: bool,
              prediction_type: str) -> np.ndarray:
    """One deterministic DDIM step (eta = 0): ``x_{t_prev}`` from ``x_t`` and the model's output."""
    a_t, b_t = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x - b_t * eps) / a_t
        if clip_sample:
            x0 = np.clip(x0, -1.0, 1.0)
            eps = (x - a_t * x0) / b_t
    else:
        x0 = np.clip(model_output, -1.0, 1.0) if clip_sample else model_output
        eps = (x - a_t * x0) / b_t
    return (math.sqrt(abar_prev) * x0 + math.sqrt(1.0 - abar_prev) * eps).astype(np.float32, copy=False)


def ddim_chunk(denoise: Denoiser, noise: np.ndarray, sampler: SamplerSpec) -> np.ndarray:
    """Run the sampler from ``noise`` (``(1, H, A)``; zeros = the noise distribution's mode, as the
    unrolled graphs use) and return the chunk in env units (before clipping to the action space)."""
    x = np.asarray(noise, dtype=np.float32)
    ts, abar = sampler.timesteps, sampler.alphas_cumprod
    t_in = np.empty((1,), np.float32)
    for i, t in enumerate(ts):
        t_in[0] = t
        out = np.asarray(denoise(x, t_in), dtype=np.float32)
        abar_prev = abar[i + 1] if i + 1 < len(ts) else 1.0
        x = ddim_step(x, out, abar[i], abar_prev, sampler.clip_sample, sampler.prediction_type)
    scale = np.asarray(sampler.action_scale, np.float32)
    offset = np.asarray(sampler.action_offset, np.float32)
    return (x - offset) / scale
