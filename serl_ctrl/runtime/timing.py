"""How long ``Policy.act`` takes when it runs an inference: the number a control loop budgets for.

A chunked policy answers most ``act`` calls from its queue in microseconds; the call that matters
is the one that predicts a chunk. :func:`time_act` therefore resets the policy before every call
(outside the timer), so each timed ``act`` checks the observation, stacks the history and runs
one inference (one chunk, the whole sampler). Used by ``serl-ctrl export`` for the model card and
by ``bench/bench_runtime.py``.

Only NumPy here: this module runs on the robot.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from .policy import Policy


def time_act(policy: Policy, observations: Sequence[Mapping[str, Any]], calls: int, warmup: int = 0,
             budget_s: float | None = None) -> np.ndarray:
    """Milliseconds of ``calls`` inference-running ``act`` calls (cycling through ``observations``),
    after ``warmup`` untimed ones; with ``budget_s``, fewer (at least one) once that much time has
    passed, so a machine under load cannot stretch a benchmark without bound."""
    if not observations:
        raise ValueError("time_act needs at least one observation")
    out = np.empty(calls)
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    n = 0
    for i in range(warmup + calls):
        obs = observations[i % len(observations)]
        policy.reset()
        start = time.perf_counter()
        policy.act(obs)
        end = time.perf_counter()
        if i >= warmup:
            out[n] = (end - start) * 1e3
            n += 1
            if deadline is not None and end > deadline:
                break
    return out[:n]


def latency_summary(ms: np.ndarray, prefix: str = "act_ms") -> dict[str, float]:
    """``{prefix}_p50`` and ``{prefix}_p99`` of a sample of latencies in milliseconds."""
    return {f"{prefix}_p50": float(np.percentile(ms, 50)), f"{prefix}_p99": float(np.percentile(ms, 99))}
