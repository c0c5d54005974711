"""Run an exported policy with onnxruntime: what the robot runs.

Imports NumPy and onnxruntime only (never torch or training code; a test proves it in a fresh
interpreter). Everything that can be checked is checked at load time, not at the first control
tick: the file exists and is a complete ONNX model, its sha256 matches the model card beside it
(``NAME.json`` next to ``NAME.onnx``), the serl_ctrl metadata has a supported schema version, and
the graph's inputs match the observation spec.

Two kinds of graph run here (the spec says which): observations -> actions (every policy class;
chunk samplers unrolled inside, their noise fixed to zeros, or with ``--sampler graph-noise`` taken
as inputs that this class feeds), or, for a diffusion policy exported with ``--sampler runtime``,
one denoiser evaluation that :func:`~serl_ctrl.runtime.sampler.ddim_chunk` calls once per DDIM step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .policy import Policy
from .sampler import ddim_chunk
from .spec import METADATA_KEY, SAMPLE_INPUT, TIMESTEP_INPUT, PolicySpec

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_path(onnx_path: str | Path) -> Path:
    """The model card of a policy file: ``NAME.json`` beside ``NAME.onnx``."""
    return Path(onnx_path).with_suffix(".json")


def read_card(onnx_path: str | Path) -> dict | None:
    path = card_path(onnx_path)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"model card {path} is not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise ValueError(f"model card {path} must hold a JSON object")
    return card


def open_session(data: bytes, threads: int, where: str) -> "tuple[ort.InferenceSession, PolicySpec]":
    """An onnxruntime CPU session on a policy file's bytes and the ``PolicySpec`` in its metadata.

    One thread between ops (policies are small graphs run next to a control loop); errors name
    ``where`` (the file, or "received policy") and say what to do."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"cannot load policy {where}: {str(exc).splitlines()[0]}") from None
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(f"{where} has no serl_ctrl metadata: export it with `serl-ctrl export`")
    return session, PolicySpec.from_json(meta[METADATA_KEY], where=where)


class OnnxPolicy(Policy):
    """A policy file run by onnxruntime on the CPU.

    Args:
        path: the .onnx file.
        threads: intra-op threads (1 keeps latency steady next to a control loop).
        verify_card: compare the file's sha256 with its model card when one exists.
        adaptive_tau: adaptive chunking threshold (see :class:`~serl_ctrl.runtime.policy.Policy`).
        sampler_seed: files whose sampler takes noise from the runtime (``--sampler runtime``: the
            NumPy DDIM loop's start; ``--sampler graph-noise``: the unrolled sampler's noise
            inputs, ``spec.noise_inputs``): draw fresh standard-normal noise per chunk from
            ``np.random.default_rng(sampler_seed)``. None (default) feeds zeros, the noise
            distribution's mode, as the default graphs have built in: deterministic, and the same
            chunk as the default export. Fresh noise keeps multimodal demonstrations multimodal
            (measured in :mod:`serl_ctrl.export.sources`). Other files have no noise to draw and
            refuse a seed.
    """

    def __init__(self, path: str | Path, threads: int = 1, verify_card: bool = True,
                 adaptive_tau: float | None = None, sampler_seed: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"policy file not found: {self.path}")
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.card = read_card(self.path)
        if verify_card and self.card is not None and self.card.get("sha256") not in (None, self.sha256):
            raise ValueError(
                f"{self.path}: sha256 {self.sha256[:16]}... does not match its model card "
                f"{card_path(self.path)} ({str(self.card['sha256'])[:16]}...): the file was changed or truncated"
            )
        self.session, spec = open_session(data, threads, str(self.path))
        super().__init__(spec, adaptive_tau)
        self._check_inputs()
        self._output = self.session.get_outputs()[0].name
        if sampler_seed is not None and spec.sampler is None and not spec.noise_inputs:
            raise ValueError(f"{self.path}: sampler_seed applies to files exported with --sampler runtime or "
                             "--sampler graph-noise; this one takes no noise (its sampler, if any, is in the "
                             "graph with zero noise)")
        self._noise_rng = np.random.default_rng(sampler_seed) if sampler_seed is not None else None
        self._zeros = np.zeros((1, spec.horizon, spec.action_dim), np.float32)
        self._zero_inputs = {k: np.zeros((1, *shape), np.float32) for k, shape in spec.noise_inputs.items()}

    def _check_inputs(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected_inputs = self.spec.graph_inputs()
        if set(inputs) != set(expected_inputs):
            raise ValueError(
                f"{self.path}: graph inputs {sorted(inputs)} do not match the spec {sorted(expected_inputs)}"
            )
        for key, (expected, dtype) in expected_inputs.items():
            inp = inputs[key]
            if _ORT_DTYPES.get(inp.type) != dtype:
                raise ValueError(f"{self.path}: input {key!r} is {inp.type}, the spec says {dtype}")
            shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)
            if shape != expected:
                raise ValueError(f"{self.path}: input {key!r} has shape {tuple(inp.shape)}, the spec says {expected}")

    def _noise(self, zeros: np.ndarray) -> np.ndarray:
        """``zeros`` without a seed, else a fresh standard-normal draw of its shape."""
        if self._noise_rng is None:
            return zeros
        return self._noise_rng.standard_normal(zeros.shape, dtype=np.float32)

    def _infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.spec.sampler is None:
            feeds = {**obs, **{k: self._noise(z) for k, z in self._zero_inputs.items()}}
            return self.session.run([self._output], feeds)[0]
        feeds = dict(obs)

        def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            feeds[SAMPLE_INPUT], feeds[TIMESTEP_INPUT] = x, t
            return self.session.run([self._output], feeds)[0]

        return ddim_chunk(denoise, self._noise(self._zeros), self.spec.sampler)
