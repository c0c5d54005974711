"""Export an :class:`~serl_ctrl.export.sources.Exportable` to one ``.onnx`` file with its model card.

Steps, each a function here: write the graph with its spec (:func:`export_onnx`, which already
compares torch and onnxruntime on random and recorded observations and removes the file when they
differ); optionally :func:`check_export` (the ``--check`` of ``serl-ctrl export``: ``onnx.checker``
on the saved file, one file with no external data, and parity again on fresh random and the
recorded observations, both for the graph alone and for the whole policy as the robot runs it:
the onnxruntime ``Policy`` with its history stacking, runtime sampler and action clipping against
the torch reference); measure ``act`` latency; optionally evaluate the file in simulation; write
the card (sha256, success rate and where it comes from, latency, parity).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..runtime.onnx_policy import OnnxPolicy
from ..runtime.spec import PolicySpec
from ..runtime.timing import latency_summary, time_act
from .onnx_export import check_close, export_onnx, git_commit, graph_feeds, parity, random_observations, write_card
from .sources import Exportable

CHECK_RANDOM = 32      # fresh random observations per --check
LATENCY_CALLS = 100


def frames(spec: PolicySpec, sample: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The single-step observations of a batch-1 sample, oldest first (one without history)."""
    if spec.n_obs_steps == 1:
        return [{k: v[0] for k, v in sample.items()}]
    return [{k: v[0, i] for k, v in sample.items()} for i in range(spec.n_obs_steps)]


def check_export(src: Exportable, path: Path, atol: float = 1e-5, seed: int = 1) -> dict[str, Any]:
    """``serl-ctrl export --check`` (module docstring); raises ValueError naming ``path`` (and
    removes it) when the file is not one valid model or differs from torch beyond ``atol``."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    from ..runtime.torch_policy import TorchPolicy

    model = onnx.load(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in model.graph.initializer):
        path.unlink(missing_ok=True)
        raise ValueError(f"{path} keeps tensors in external data files: a policy must be one file")
    onnx.checker.check_model(model, full_check=True)
    random = random_observations(src.spec, CHECK_RANDOM, seed=seed)
    samples = [*random, *src.recorded]
    graph_diff = parity(src.module, path, graph_feeds(src.spec, samples, seed=seed), atol)
    deployed, reference = OnnxPolicy(path, verify_card=False), TorchPolicy(src.reference, src.spec)
    policy_diff = 0.0
    for sample in samples:
        for p in (deployed, reference):
            p.reset()
        for frame in frames(src.spec, sample):
            got, expected = deployed.predict_chunk(frame), reference.predict_chunk(frame)
        policy_diff = max(policy_diff, check_close(expected, got, atol, path, what="policy parity check"))
    return {"onnx_checker": "passed", "single_file": True, "random_samples": len(random),
            "recorded_samples": len(src.recorded), "graph_max_abs_diff": graph_diff,
            "policy_max_abs_diff": policy_diff, "atol": atol}


def export_policy(src: Exportable, out: str | Path, *, check: bool = False, evaluate: int = 0,
                  backend: str = "mujoco", atol: float = 1e-5, command: str | None = None,
                  progress: Callable | None = None) -> dict[str, Any]:
    """Write ``out`` (``.onnx``) and its card; returns what ``serl-ctrl export --json`` prints."""
    out = Path(out)
    report = export_onnx(src.module, src.spec, out, recorded_obs=src.recorded, atol=atol)
    checked = check_export(src, out, atol) if check else None
    policy = OnnxPolicy(out, verify_card=False)
    observations = [frames(src.spec, s)[-1] for s in random_observations(src.spec, 8, seed=2)]
    latency = latency_summary(time_act(policy, observations, LATENCY_CALLS, warmup=10), "infer_ms")
    card: dict[str, Any] = {**src.card}
    if evaluate:
        card.update(_evaluate(policy, backend, evaluate, progress))
    max_diff = max([report.parity_max_abs_diff] + ([checked["graph_max_abs_diff"], checked["policy_max_abs_diff"]]
                                                   if checked else []))
    fields = {"algo": src.algo, "task": src.spec.task, "obs": src.spec.obs_mode, "sampler": src.sampler,
              "sampler_steps": src.sampler_steps, "language_conditioned": src.spec.language_conditioned,
              "success_rate": None, **card, **latency, "parity_max_abs_diff": report.parity_max_abs_diff,
              "parity_samples": report.parity_samples, "check": checked, "source": str(src.source),
              "recorded_from": src.recorded_from, "command": command, "commit": git_commit()}
    path = write_card(out, **fields)
    return {"onnx": str(out), "card": str(path), "sha256": report.sha256, "bytes": report.bytes,
            "max_abs_diff": max_diff, "algo": src.algo, "sampler": src.sampler, "sampler_steps": src.sampler_steps,
            "parity_samples": report.parity_samples, "recorded_samples": len(src.recorded),
            "checked": checked is not None, **latency, "success_rate": card.get("success_rate"),
            "success_source": card.get("success_source")}


def _evaluate(policy: OnnxPolicy, backend: str, episodes: int, progress: Callable | None) -> dict[str, Any]:
    """Success of the exported file itself in simulation, on the seeds training evaluates on."""
    from ..agents.imitation_run import EVAL_SEED
    from ..runtime.evaluate import evaluate, make_eval_env

    env = make_eval_env(policy, backend=backend)
    try:
        ev = evaluate(policy, env, episodes, seed=EVAL_SEED, progress=progress)
    finally:
        env.close()
    return {"success_rate": ev["success_rate"], "eval_episodes": episodes, "eval_seeds": f"{EVAL_SEED}+",
            "eval_backend": backend, "success_source": "this file, evaluated by serl-ctrl export --evaluate",
            "act_ms_p50": ev["act_ms_p50"], "act_ms_p99": ev["act_ms_p99"]}
