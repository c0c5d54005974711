"""What a deployed policy expects and produces, carried inside every exported .onnx file.

The spec travels as JSON in the ONNX model's metadata (key ``serl_ctrl``), so the robot side needs
nothing but the file: observation keys with shapes and dtypes, the action space, the control rate,
action chunking, and where the policy came from (algorithm, task, training command, commit).
Observations are checked against it before every inference, so a wrong topic mapping fails with
the key's name at the first tick, and a wrong file fails at load time.

Only NumPy here: this module is imported on the robot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 1
METADATA_KEY = "serl_ctrl"
DTYPES = ("float32", "uint8")


@dataclass(frozen=True)
class ObsField:
    """One observation entry: its shape for ONE time step (no batch, no history) and dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"observation dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass(frozen=True)
class PolicySpec:
    """The contract between a policy file and whoever runs it.

    ``horizon`` actions are predicted per inference (1 for SAC), of which ``n_action_steps`` are
    executed before the next inference; ``n_obs_steps`` observations (the latest last) are stacked
    as the input history. Actions are in the environment's units, within ``action_low/high``.
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

    # --- serialisation ----------------------------------------------------------------------------

    def to_json(self) -> str:
        d = asdict(self)
        d["obs"] = {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.obs.items()}
        return json.dumps(d, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str = "policy spec") -> "PolicySpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: the serl_ctrl metadata is not valid JSON ({exc})") from None
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{where}: policy schema version {version!r} is not supported "
                f"(this serl_ctrl reads version {SCHEMA_VERSION}); re-export the policy"
            )
        try:
            d["obs"] = {k: ObsField(tuple(v["shape"]), v["dtype"]) for k, v in d["obs"].items()}
            d["action_low"] = tuple(d["action_low"])
            d["action_high"] = tuple(d["action_high"])
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: malformed policy spec ({exc})") from None

    # --- checking observations --------------------------------------------------------------------

    def check_obs(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Return the observation entries the policy needs, as arrays of the right dtype.

        Raises ValueError naming the key for a missing entry, a wrong shape, a float where uint8
        images are expected (or the reverse), or non-finite values. Extra keys are ignored.
        """
        out = {}
        for key, f in self.obs.items():
            if key not in obs:
                raise ValueError(f"observation is missing key {key!r}; the policy needs {list(self.obs)}")
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
                if not np.all(np.isfinite(value)):
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
