"""Export a policy's torch module to one self-describing ONNX file, and prove it equal.

The file carries the :class:`~serl_ctrl.runtime.spec.PolicySpec` in its metadata and holds every
step from raw observation to action (uint8 images -> floats, normalisation, action scaling live in
the graph), so the robot side feeds observations as the environment produces them. After writing,
the file passes ``onnx.checker`` and its outputs are compared with the torch module on random
observations (and recorded ones when given): max abs diff <= ``atol`` (relative for large
outputs), or the export fails.

A graph whose spec has a ``sampler`` (a diffusion denoiser the runtime samples around) takes the
sampler's inputs too (``noisy_action``, ``timestep``; see ``PolicySpec.graph_inputs``): the module
then maps that whole dict to the denoiser's output, and the parity samples draw those inputs at
random (timesteps from the sampler's own). A graph whose spec has ``noise_inputs`` (an unrolled
sampler whose noise the runtime feeds, ``--sampler graph-noise``) is compared the same way, on
random standard-normal noise inputs.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from ..runtime.onnx_policy import OnnxPolicy, card_path, file_sha256
from ..runtime.spec import INSTRUCTION_KEY, METADATA_KEY, SAMPLE_INPUT, TIMESTEP_INPUT, PolicySpec
from ..utils.atomic import atomic_path, atomic_write_text

# The exporter logs a warning per torchvision operator it cannot register; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

OPSET = 18
MAX_SINGLE_FILE_BYTES = 2 * 1024**3  # protobuf's limit: larger models would need external data


class _Positional(torch.nn.Module):
    """Adapts a module taking a dict of tensors to positional inputs, in spec order."""

    def __init__(self, module: torch.nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.keys = tuple(keys)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.module(dict(zip(self.keys, tensors)))


def random_observations(spec: PolicySpec, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Batch-1 observations (with history when the spec has one): floats ~ N(0, 1), random images."""
    rng = np.random.default_rng(seed)
    history = (spec.n_obs_steps,) if spec.n_obs_steps > 1 else ()
    out = []
    for _ in range(n):
        obs = {}
        for key, f in spec.obs.items():
            shape = (1, *history, *f.shape)
            obs[key] = (rng.integers(0, 256, shape, dtype=np.uint8) if f.dtype == "uint8"
                        else rng.normal(0, 1, shape).astype(np.float32))
        out.append(obs)
    return out


def recorded_observations(spec: PolicySpec, episodes: Sequence, n: int = 16) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` batch-1 observations (with history) spread evenly over recorded ``episodes``
    (``serl_ctrl.data.episodes.Episode``): the observations a policy really meets, for parity.

    Episodes recorded with instruction labels but without their embeddings get a random unit
    vector as ``instruction_embedding`` (the states are real, the instruction is synthetic).
    Raises ValueError naming the key when the episodes lack another key the policy needs, or
    record it with another shape."""
    frames: list[tuple[int, int]] = [(e, t) for e, ep in enumerate(episodes) for t in range(ep.length + 1)]
    if not frames:
        return []
    synthetic = INSTRUCTION_KEY in spec.obs and INSTRUCTION_KEY not in episodes[0].observations
    rng = np.random.default_rng(0)
    for key, f in spec.obs.items():
        have = episodes[0].observations.get(key)
        if have is None and synthetic and key == INSTRUCTION_KEY:
            continue
        if have is None:
            raise ValueError(f"recorded episodes have no observation {key!r}; the policy needs {list(spec.obs)}")
        if tuple(have.shape[1:]) != f.shape:
            raise ValueError(f"recorded observation {key!r} has shape {tuple(have.shape[1:])}, "
                             f"the policy expects {f.shape}")
    picks = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    dtype = {k: np.uint8 if f.dtype == "uint8" else np.float32 for k, f in spec.obs.items()}
    out = []
    for i in picks:
        e, t = frames[i]
        obs = dict(episodes[e].observations)
        if synthetic:
            v = rng.normal(size=spec.obs[INSTRUCTION_KEY].shape)
            obs[INSTRUCTION_KEY] = np.broadcast_to(v / np.linalg.norm(v), (t + 1, *v.shape))
        window = [max(t - spec.n_obs_steps + 1 + j, 0) for j in range(spec.n_obs_steps)]
        if spec.n_obs_steps > 1:
            out.append({k: np.ascontiguousarray(obs[k][window][None], dtype[k]) for k in spec.obs})
        else:
            out.append({k: np.ascontiguousarray(obs[k][t][None], dtype[k]) for k in spec.obs})
    return out


def graph_feeds(spec: PolicySpec, observations: Sequence[dict[str, np.ndarray]],
                seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Every graph input for each observation: the observations themselves, plus for a
    runtime-sampler graph a random noisy chunk and one of the sampler's timesteps, and for a graph
    with noise inputs random standard-normal noise."""
    rng = np.random.default_rng(seed)
    shapes = spec.graph_inputs()
    out = []
    for obs in observations:
        feeds = dict(obs)
        if spec.sampler is not None:
            feeds[SAMPLE_INPUT] = rng.normal(0, 1, shapes[SAMPLE_INPUT][0]).astype(np.float32)
            feeds[TIMESTEP_INPUT] = np.array([rng.choice(spec.sampler.timesteps)], np.float32)
        for name in spec.noise_inputs:
            feeds[name] = rng.normal(0, 1, shapes[name][0]).astype(np.float32)
        out.append(feeds)
    return out


def git_commit() -> str | None:
    """The commit of the source checkout this code runs from, if it is one."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class ExportReport:
    path: Path
    sha256: str
    bytes: int
    opset: int
    parity_max_abs_diff: float
    parity_samples: int

    def as_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "bytes": self.bytes, "opset": self.opset,
                "parity_max_abs_diff": self.parity_max_abs_diff, "parity_samples": self.parity_samples}


def export_onnx(
    module: torch.nn.Module,
    spec: PolicySpec,
    path: str | Path,
    recorded_obs: Sequence[dict[str, np.ndarray]] = (),
    n_random: int = 16,
    atol: float = 1e-5,
) -> ExportReport:
    """Write ``module`` (dict of batched tensors -> actions) to ``path`` with ``spec`` inside.

    ``recorded_obs`` (batch-1 dicts, e.g. from demonstrations) join the random observations in the
    parity check. Raises ValueError when the parity check fails (the file is then removed).
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"export path must end in .onnx, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    keys = list(spec.graph_inputs())
    example = graph_feeds(spec, random_observations(spec, 1))[0]
    wrapper = _Positional(module, keys)
    args = tuple(torch.from_numpy(example[k]) for k in keys)
    output = "action" if spec.sampler is None else "model_output"
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, args, dynamo=True, input_names=keys, output_names=[output],
                                    opset_version=OPSET, verbose=False)
        model = program.model_proto
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, spec.to_json()
        size = model.ByteSize()
        if size >= MAX_SINGLE_FILE_BYTES:
            raise ValueError(f"model is {size / 1e9:.1f} GB: over the 2 GB single-file limit")
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, str(tmp), save_as_external_data=False)

    samples = graph_feeds(spec, [*random_observations(spec, n_random), *recorded_obs])
    worst = parity(module, path, samples, atol)
    return ExportReport(path, file_sha256(path), path.stat().st_size, OPSET, worst, len(samples))


def parity(module: torch.nn.Module, path: Path, samples: Sequence[dict[str, np.ndarray]], atol: float = 1e-5,
           remove_on_failure: bool = True) -> float:
    """Largest difference between torch and onnxruntime over ``samples`` (every graph input per
    sample, see :func:`graph_feeds`); raises ValueError above ``atol`` (relative to the output's
    magnitude when that exceeds 1), after removing the file unless ``remove_on_failure`` is off."""
    session = OnnxPolicy(path, verify_card=False).session
    worst = 0.0
    with torch.inference_mode():
        for obs in samples:
            expected = module({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obs.items()}).float().numpy()
            got = session.run(None, obs)[0]
            worst = max(worst, check_close(expected, got, atol, path, remove_on_failure))
    return worst


def check_close(expected: np.ndarray, got: np.ndarray, atol: float, path: Path, remove_on_failure: bool = True,
                what: str = "ONNX parity check") -> float:
    """``max |expected - got|``; raises ValueError naming ``path`` when it exceeds ``atol`` times
    ``max(1, max |expected|)`` (an absolute bound for actions in [-1, 1], relative for large outputs)."""
    diff = float(np.max(np.abs(np.asarray(expected, np.float64) - np.asarray(got, np.float64))))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not diff <= atol * scale:  # also catches NaN
        if remove_on_failure:
            path.unlink(missing_ok=True)
        raise ValueError(f"{what} failed for {path}: max abs diff {diff:.3g} > {atol * scale:.3g}")
    return diff


def write_card(onnx_path: str | Path, **fields) -> Path:
    """Write the model card ``NAME.json`` beside ``NAME.onnx`` (atomically), with its sha256."""
    import json

    from .. import __version__

    onnx_path = Path(onnx_path)
    card = {"file": onnx_path.name, "sha256": file_sha256(onnx_path),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "serl_ctrl_version": __version__, **fields}
    path = card_path(onnx_path)
    atomic_write_text(path, json.dumps(card, indent=2) + "\n")
    return path
