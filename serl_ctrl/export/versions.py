"""Policy versions of a SAC actor as ONNX, exported once and then re-weighted in milliseconds.

A learner publishes a new policy version every few hundred updates; running the dynamo exporter
for each (seconds of CPU) would stall training. :class:`SacOnnxVersions` exports the graph ONCE
and afterwards only swaps the weights (the ModelProto's initializers) for each new state dict:

* the graph maps observations (as the environment gives them) to three outputs: ``action``, the
  deterministic, deployed action ``tanh(mean) * scale + center``, first, so the file is an ordinary
  serl_ctrl policy (``serl_ctrl.runtime.load_policy`` / policy_node run it); then the
  tanh-Gaussian's pre-tanh ``mean`` and ``log_std``, with which an actor explores
  (``serl_ctrl.runtime.exploration``): ``tanh(mean + exp(log_std) * eps) * scale + center``;
* the template is exported from a *salted* copy of the module, every parameter and buffer filled
  with distinct random values, so that the exporter cannot merge equal tensors (a fresh network's
  LayerNorm weights are all ones: the optimiser would share one initializer between layers that
  later diverge) or fold a weight into a constant without the check below noticing;
* every entry of the state dict maps to the initializer of the same name, or is proven unused by
  the policy (changing it does not change the module's outputs, e.g. the normaliser's
  ``state_norm_fitted`` flag). Anything else fails loudly at construction, naming the entry;
* each version (the first one always) is checked: torch and onnxruntime agree on random
  observations (and recorded ones, if given) to ``atol`` (1e-5) on all three outputs.

Only the learner side imports this (torch); the actor needs numpy and onnxruntime only.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from ..runtime.spec import METADATA_KEY, PolicySpec
from .onnx_export import OPSET, check_close, random_observations

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

OUTPUTS = ("action", "mean", "log_std")

__all__ = ["OUTPUTS", "ExplorationModule", "OnnxVersion", "SacOnnxVersions"]


class ExplorationModule(nn.Module):
    """Observation tensors (positional, in ``keys`` order) -> (action, mean, log_std).

    ``encoder`` and ``actor`` are a ``SACAgent``'s ``ObservationEncoder`` and
    ``TanhGaussianActor``, so the state dict is keyed exactly as ``SACAgent.actor_state_dict()``
    (``encoder.*``, ``actor.*``) plus the fixed action ``scale`` and ``center``."""

    def __init__(self, encoder: nn.Module, actor: nn.Module, keys: Sequence[str], low: np.ndarray,
                 high: np.ndarray) -> None:
        super().__init__()
        self.encoder = encoder
        self.actor = actor
        self.keys = tuple(keys)
        low, high = np.asarray(low, np.float64).reshape(-1), np.asarray(high, np.float64).reshape(-1)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, *tensors: torch.Tensor):
        mean, log_std = self.actor(self.encoder(dict(zip(self.keys, tensors))))
        return torch.tanh(mean) * self.scale + self.center, mean, log_std

    @classmethod
    def from_agent(cls, agent: Any) -> "ExplorationModule":
        """A detached CPU float32 copy of a ``SACAgent``'s encoder and actor."""
        if getattr(agent, "grasp_critic", None) is not None:
            raise ValueError("policy versions for exploring actors do not support sac.gripper_critic yet (the "
                             "graph's mean/log_std outputs cover continuous actions only); export the deterministic "
                             "policy with SACAgent.policy_state() instead")
        mod = cls(copy.deepcopy(agent.encoder).cpu(), copy.deepcopy(agent.actor).cpu(), agent.spec.keys,
                  agent.action_space.low, agent.action_space.high)
        return mod.float().eval().requires_grad_(False)


@dataclass(frozen=True)
class OnnxVersion:
    """One exported policy version: the file's bytes and what a receiver checks."""

    data: bytes
    sha256: str
    policy_version: int
    parity_max_abs_diff: float
    export_ms: float


class SacOnnxVersions:
    """Export a SAC actor once; then :meth:`version` gives the ONNX bytes of any new weights.

    Args:
        agent: the ``SACAgent`` being trained (its encoder/actor structure and spaces are used;
            its weights at construction are only the starting point).
        spec: the :class:`PolicySpec` stored in every file (its ``extra`` gains
            ``policy_version`` and ``outputs``).
        recorded_obs: batch-1 observation dicts that join the random ones in the parity checks.
        atol: parity tolerance (relative above 1, as :func:`~serl_ctrl.export.onnx_export.check_close`).
        check_every_version: run the parity check for every version, not only the first (a few
            milliseconds for state policies).

    Raises ValueError when a state-dict entry has no initializer of its own and is used by the
    policy, or when the first parity check fails.
    """

    def __init__(self, agent: Any, spec: PolicySpec, recorded_obs: Sequence[Mapping[str, np.ndarray]] = (),
                 atol: float = 1e-5, check_every_version: bool = True, n_random: int = 8) -> None:
        self.spec = spec
        self.atol = float(atol)
        self.check_every_version = bool(check_every_version)
        self._checked = False
        self.reference = ExplorationModule.from_agent(agent)
        self.keys = self.reference.keys
        if list(spec.graph_inputs()) != list(self.keys):
            raise ValueError(f"spec observations {list(spec.graph_inputs())} != the agent's keys {list(self.keys)}")
        dtypes = {k: np.dtype(f.dtype) for k, f in spec.obs.items()}
        self.samples = [{k: np.ascontiguousarray(obs[k], dtype=dtypes[k]) for k in self.keys}
                        for obs in [*random_observations(spec, n_random, seed=1), *recorded_obs]]
        start = time.perf_counter()
        self.model = self._export_salted()
        self.export_s = time.perf_counter() - start
        self._inits = {init.name: init for init in self.model.graph.initializer}
        state = self.reference.state_dict()
        self.mapped = tuple(k for k in state if k in self._inits)
        unmapped = [k for k in state if k not in self._inits]
        self.unused = tuple(self._prove_unused(unmapped))
        for k in self.mapped:  # the graph must hold the tensor exactly as the module does
            init = self._inits[k]
            if tuple(init.dims) != tuple(state[k].shape) or init.data_type != onnx.TensorProto.FLOAT:
                raise ValueError(f"initializer {k!r} is {list(init.dims)} of ONNX type {init.data_type}; the module "
                                 f"holds {list(state[k].shape)} float32: the export did not keep it as it is")
        self._meta = next(p for p in self.model.metadata_props if p.key == METADATA_KEY)
        self.fixed = {k: state[k].clone() for k in ("scale", "center")}

    # --- the one export ---------------------------------------------------------------------------------

    def _export_salted(self) -> onnx.ModelProto:
        salted = copy.deepcopy(self.reference)
        gen = torch.Generator().manual_seed(12345)
        with torch.no_grad():
            for t in salted.state_dict().values():
                if t.is_floating_point():
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
        args = tuple(torch.from_numpy(self.samples[0][k]) for k in self.keys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(salted, args, dynamo=True, input_names=list(self.keys),
                                        output_names=list(OUTPUTS), opset_version=OPSET, verbose=False)
        model = program.model_proto
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, self.spec.to_json()
        onnx.checker.check_model(model, full_check=True)
        outputs = [o.name for o in model.graph.output]
        if outputs != list(OUTPUTS):
            raise ValueError(f"exported graph outputs {outputs}, expected {list(OUTPUTS)}")
        return model

    def _prove_unused(self, names: Sequence[str]) -> list[str]:
        """The entries without an initializer must not influence the outputs; raise otherwise."""
        if not names:
            return []
        base = self._torch_outputs(self.reference, self.samples[:4])
        for name in names:
            probe = copy.deepcopy(self.reference)
            with torch.no_grad():
                t = probe.state_dict()[name]
                t.copy_(t + 1.0 if t.is_floating_point() else 1 - t if t.dtype == torch.bool else t + 1)
            if any(not np.array_equal(a, b) for a, b in zip(base, self._torch_outputs(probe, self.samples[:4]))):
                raise ValueError(
                    f"state entry {name!r} changes the policy's outputs but has no initializer of its own in the "
                    f"exported graph (the exporter folded or renamed it); initializers: {sorted(self._inits)}")
        return list(names)

    # --- versions -----------------------------------------------------------------------------------------

    def version(self, state_dict: Mapping[str, Any], policy_version: int, check: bool | None = None) -> OnnxVersion:
        """The ONNX bytes for ``state_dict`` (``SACAgent.actor_state_dict()``: ``encoder.*``,
        ``actor.*``). Raises ValueError naming missing or unknown entries, wrong shapes, or a
        parity failure."""
        start = time.perf_counter()
        state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
                 for k, v in state_dict.items()}
        state.update(self.fixed)
        expected = set(self.mapped) | set(self.unused)
        missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unknown:
            raise ValueError(f"policy weights do not match the exported graph: missing {missing}, unknown {unknown}")
        for k in self.mapped:
            init, value = self._inits[k], state[k]
            if tuple(value.shape) != tuple(init.dims):
                raise ValueError(f"weight {k!r} has shape {tuple(value.shape)}, the graph's is {tuple(init.dims)}")
            a = np.ascontiguousarray(value.numpy(), dtype="<f4")
            if not np.isfinite(a).all():
                raise ValueError(f"weight {k!r} holds NaN or inf")
            init.ClearField("float_data")
            init.raw_data = a.tobytes()
        spec = PolicySpec.from_json(self.spec.to_json())
        spec.extra.update(policy_version=int(policy_version), outputs=list(OUTPUTS))
        self._meta.value = spec.to_json()
        data = self.model.SerializeToString()
        diff = float("nan")
        if check if check is not None else (self.check_every_version or not self._checked):
            self.reference.load_state_dict(state)
            diff = self.parity(data)
            self._checked = True
        return OnnxVersion(data, hashlib.sha256(data).hexdigest(), int(policy_version), diff,
                           (time.perf_counter() - start) * 1e3)

    def parity(self, data: bytes) -> float:
        """Largest |torch - onnxruntime| over the samples and all outputs; raises above ``atol``."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        expected = self._torch_outputs(self.reference, self.samples)
        worst = 0.0
        for obs, exp in zip(self.samples, expected):
            got = session.run(list(OUTPUTS), obs)
            for name, e, g in zip(OUTPUTS, exp, got):
                worst = max(worst, check_close(e, g, self.atol, _NoFile(), remove_on_failure=False,
                                               what=f"ONNX parity check of output {name!r}"))
        return worst

    def _torch_outputs(self, module: nn.Module, samples) -> list:
        with torch.inference_mode():
            out = []
            for obs in samples:
                res = module(*(torch.from_numpy(obs[k]) for k in self.keys))
                out.append(tuple(r.float().numpy() for r in res))
            return out


class _NoFile:
    """``check_close`` names a path in its error; a version lives in memory."""

    def __str__(self) -> str:
        return "the policy version in memory"

    def __fspath__(self) -> str:  # pragma: no cover - never used as a path
        return str(self)
