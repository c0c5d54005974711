"""What a deployed policy expects and produces, carried inside every exported .onnx file.

The spec travels as JSON in the ONNX model's metadata (key ``serl_ctrl``), so the robot side needs
nothing but the file: observation keys with shapes and dtypes, the action space, the control rate,
action chunking, and where the policy came from (algorithm, task, training command, commit).
Observations are checked against it before every inference, so a wrong topic mapping fails with
the key's name at the first tick, and a wrong file fails at load time.

Schema versions: 1 (the first files, e.g. the policies shipped in ``policies/``); 2, which adds
the optional ``sampler``: when set, the graph is ONE denoiser evaluation and the runtime runs the
sampling loop around it (:mod:`serl_ctrl.runtime.sampler`) from the constants stored here; and 3,
which adds the optional ``noise_inputs``: the graph unrolls its sampler but takes the sampler's
noise as inputs, which the runtime feeds (zeros, or fresh seeded draws per chunk). An older file
reads as a newer one without those fields; files are always written as the newest version.

A language-conditioned policy takes the instruction as one more float observation,
``instruction_embedding`` (:data:`INSTRUCTION_KEY`, shape ``(384,)``: a MiniLM sentence embedding).

Only NumPy here: this module is imported on the robot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
METADATA_KEY = "serl_ctrl"
DTYPES = ("float32", "uint8")
INSTRUCTION_KEY = "instruction_embedding"
INSTRUCTION_DIM = 384
SAMPLER_KINDS = ("ddim",)
PREDICTION_TYPES = ("epsilon", "sample")
# Graph inputs of a runtime-sampler policy besides the observations: the noisy normalised chunk
# (1, horizon, action_dim) and the diffusion timestep (1,), both float32.
SAMPLE_INPUT, TIMESTEP_INPUT = "noisy_action", "timestep"


@dataclass(frozen=True)
class ObsField:
    """One observation entry: its shape for ONE time step (no batch, no history) and dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"observation dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass(frozen=True)
class SamplerSpec:
    """A DDIM sampler (eta = 0) the runtime runs around a denoiser graph.

    ``timesteps`` are the DDIM steps, noisiest first, and ``alphas_cumprod`` the schedule's
    cumulative alpha at each of them; after the last step the previous alpha is 1, so the result is
    the model's final ``x_0`` estimate. The graph's output is the noise (``prediction_type
    "epsilon"``) or ``x_0`` (``"sample"``) for inputs ``noisy_action`` and ``timestep``; with
    ``clip_sample`` the ``x_0`` estimate is clipped to [-1, 1]. The chunk leaves the sampler in
    normalised units: env units are ``(x - action_offset) / action_scale`` (the policy's own
    normaliser, ``normalised = action * scale + offset``), then clipped to the action space.
    """

    timesteps: tuple[int, ...]
    alphas_cumprod: tuple[float, ...]
    prediction_type: str
    clip_sample: bool
    action_scale: tuple[float, ...]
    action_offset: tuple[float, ...]
    kind: str = "ddim"

    def __post_init__(self) -> None:
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind must be one of {SAMPLER_KINDS}, got {self.kind!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"sampler prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if not self.timesteps or len(self.timesteps) != len(self.alphas_cumprod):
            raise ValueError("sampler needs one alphas_cumprod entry per timestep (and at least one step)")
        if not all(0.0 < a < 1.0 for a in self.alphas_cumprod):
            raise ValueError("sampler alphas_cumprod must lie in (0, 1)")
        if len(self.action_scale) != len(self.action_offset) or not all(s != 0 for s in self.action_scale):
            raise ValueError("sampler action_scale/action_offset must have equal lengths and no zero scale")

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplerSpec":
        return cls(timesteps=tuple(int(t) for t in d["timesteps"]),
                   alphas_cumprod=tuple(float(a) for a in d["alphas_cumprod"]),
                   prediction_type=d["prediction_type"], clip_sample=bool(d["clip_sample"]),
                   action_scale=tuple(float(x) for x in d["action_scale"]),
                   action_offset=tuple(float(x) for x in d["action_offset"]), kind=d.get("kind", "ddim"))


@dataclass(frozen=True)
class PolicySpec:
    """The contract between a policy file and whoever runs it.

    ``horizon`` actions are predicted per inference (1 for SAC), of which ``n_action_steps`` are
    executed before the next inference; ``n_obs_steps`` observations (the latest last) are stacked
    as the input history. Actions are in the environment's units, within ``action_low/high``.
    ``sampler`` (schema 2) says the graph is one denoiser evaluation that the runtime samples
    with (see :class:`SamplerSpec`); None means the graph maps observations to actions itself.
    ``noise_inputs`` (schema 3) names the graph's noise inputs with their shapes for ONE sample (no
    batch axis), in graph order after the observations: an unrolled sampler (diffusion DDIM,
    consistency) whose noise the runtime feeds, standard normal per chunk or zeros (the mode).
    Fresh noise matters for multimodal demonstrations (measured in :mod:`serl_ctrl.export.sources`).
    """

    obs: dict[str, ObsField]
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_hz: float = 10.0
    algo: str = ""
    task: str | None = None
    obs_mode: str | None = None
    n_obs_steps: int = 1
    horizon: int = 1
    n_action_steps: int = 1
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    sampler: SamplerSpec | None = None
    noise_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError("action_low/action_high must have action_dim entries")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps must be in [1, horizon={self.horizon}], got {self.n_action_steps}")
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        if not self.obs:
            raise ValueError("a policy needs at least one observation entry")
        if self.sampler is not None and len(self.sampler.action_scale) != self.action_dim:
            raise ValueError(f"sampler action_scale has {len(self.sampler.action_scale)} entries, "
                             f"action_dim is {self.action_dim}")
        clash = {SAMPLE_INPUT, TIMESTEP_INPUT} & set(self.obs) if self.sampler is not None else set()
        if clash:
            raise ValueError(f"observation keys {sorted(clash)} are reserved for the sampler's graph inputs")
        self._check_noise_inputs()

    def _check_noise_inputs(self) -> None:
        if not isinstance(self.noise_inputs, dict):
            raise ValueError(f"noise_inputs must map input names to shapes, got {type(self.noise_inputs).__name__}")
        if self.noise_inputs and self.sampler is not None:
            raise ValueError("noise_inputs: a runtime-sampler graph (sampler) draws no noise in the graph; "
                             "a spec has noise_inputs or a sampler, not both")
        for name, shape in self.noise_inputs.items():
            if not isinstance(name, str) or not name or name in self.obs:
                raise ValueError(f"noise_inputs: input name {name!r} must be a non-empty string that is not an "
                                 f"observation key ({list(self.obs)})")
            if (not isinstance(shape, tuple) or not shape
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
                raise ValueError(f"noise_inputs: shape of {name!r} must be a non-empty tuple of positive ints, "
                                 f"got {shape!r}")

    @property
    def language_conditioned(self) -> bool:
        """Whether the policy takes an instruction embedding (:data:`INSTRUCTION_KEY`)."""
        return INSTRUCTION_KEY in self.obs

    def graph_inputs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every input of the policy's graph with its batch-1 shape and dtype, in graph order:
        the observations (with the history axis when ``n_obs_steps > 1``), then the sampler's (a
        runtime sampler's ``noisy_action`` and ``timestep``, or an unrolled sampler's noise inputs)."""
        history = (self.n_obs_steps,) if self.n_obs_steps > 1 else ()
        out = {k: ((1, *history, *f.shape), f.dtype) for k, f in self.obs.items()}
        if self.sampler is not None:
            out[SAMPLE_INPUT] = ((1, self.horizon, self.action_dim), "float32")
            out[TIMESTEP_INPUT] = ((1,), "float32")
        for name, shape in self.noise_inputs.items():
            out[name] = ((1, *shape), "float32")
        return out

    # --- serialisation ----------------------------------------------------------------------------

    def to_json(self) -> str:
        d = asdict(self)
        d["obs"] = {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.obs.items()}
        if self.sampler is None:
            del d["sampler"]
        if self.noise_inputs:
            d["noise_inputs"] = {k: list(v) for k, v in self.noise_inputs.items()}
        else:
            del d["noise_inputs"]
        return json.dumps(d, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str = "policy spec") -> "PolicySpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: the serl_ctrl metadata is not valid JSON ({exc})") from None
        version = d.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"{where}: policy schema version {version!r} is not supported "
                f"(this serl_ctrl reads versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); "
                "re-export the policy"
            )
        if version == 1 and "sampler" in d:
            raise ValueError(f"{where}: malformed policy spec (a version 1 spec has no sampler)")
        if version in (1, 2) and "noise_inputs" in d:
            raise ValueError(f"{where}: malformed policy spec (a version {version} spec has no noise_inputs)")
        try:
            d["obs"] = {k: ObsField(tuple(v["shape"]), v["dtype"]) for k, v in d["obs"].items()}
            d["action_low"] = tuple(d["action_low"])
            d["action_high"] = tuple(d["action_high"])
            if d.get("sampler") is not None:
                d["sampler"] = SamplerSpec.from_dict(d["sampler"])
            if "noise_inputs" in d:
                d["noise_inputs"] = _noise_inputs_from_json(d["noise_inputs"])
            return cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: malformed policy spec ({exc})") from None

    # --- checking observations --------------------------------------------------------------------

    def check_obs(self, obs: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Return the observation entries the policy needs (or only ``keys``), as arrays of the right dtype.

        Raises ValueError naming the key for a missing entry, a wrong shape, a float where uint8
        images are expected (or the reverse), or non-finite values. Extra keys are ignored.
        """
        out = {}
        for key in self.obs if keys is None else keys:
            f = self.obs[key]
            if key not in obs:
                hint = (" (pass the instruction's embedding in the observation or call "
                        "policy.set_instruction(embedding))" if key == INSTRUCTION_KEY else "")
                raise ValueError(f"observation is missing key {key!r}; the policy needs {list(self.obs)}{hint}")
            value = np.asarray(obs[key])
            if value.shape != f.shape:
                raise ValueError(f"observation {key!r} has shape {value.shape}, the policy expects {f.shape}")
            if f.dtype == "uint8":
                if value.dtype != np.uint8:
                    raise ValueError(f"observation {key!r} must be uint8 (an image), got {value.dtype}")
            else:
                if value.dtype.kind not in "fiu":
                    raise ValueError(f"observation {key!r} must be numeric, got {value.dtype}")
                value = value.astype(np.float32, copy=False)
                if not np.isfinite(value).all():  # the method: np.all() costs 2 us more per key
                    raise ValueError(f"observation {key!r} contains NaN or inf")
            out[key] = value
        return out

    @classmethod
    def from_spaces(cls, observation_space, action_space, **kwargs) -> "PolicySpec":
        """A spec from gymnasium spaces (Dict of Box, or one Box exposed as the key ``obs``)."""
        from gymnasium import spaces

        items = observation_space.spaces.items() if isinstance(observation_space, spaces.Dict) else [
            ("obs", observation_space)]
        obs = {k: ObsField(tuple(int(n) for n in s.shape), "uint8" if s.dtype == np.uint8 else "float32")
               for k, s in items}
        return cls(
            obs=obs,
            action_dim=int(np.prod(action_space.shape)),
            action_low=tuple(float(x) for x in np.ravel(action_space.low)),
            action_high=tuple(float(x) for x in np.ravel(action_space.high)),
            **kwargs,
        )


def _noise_inputs_from_json(value: Any) -> dict[str, tuple[int, ...]]:
    """``{"name": [H, A], ...}`` -> ``{"name": (H, A)}``; anything else raises ValueError naming the field."""
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise ValueError(f"noise_inputs must map input names to shape lists, got {value!r}")
    return {k: tuple(v) for k, v in value.items()}
