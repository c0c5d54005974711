"""Typed, validated configuration for the SAC (RLPD / DrQ) agent.

A config is a frozen tree of dataclasses. Build one from defaults, a dict, a YAML file or
command-line overrides; every error names the field that is wrong and says what is allowed::

    cfg = SACConfig()                                     # defaults (SERL / RLPD choices)
    cfg = SACConfig.from_dict({"utd": 8, "encoder": {"pooling": "flatten"}})
    cfg = SACConfig.from_yaml("config/sac_panda.yaml")   # a mapping, optionally under a "sac:" key
    cfg = SACConfig.from_overrides(["sac.utd=8", "sac.hidden_dims=128,128"], base=cfg)
    cfg.to_dict()                                         # plain JSON-able dict (checkpoints)

Defaults and why:

* ``n_critics=10``, ``critic_subsample=2``, ``layer_norm=True``, ``demo_fraction=0.5``: RLPD
  (Ball et al. 2023), as used by SERL.
* ``utd=4``: SERL's pixel (DrQ) examples update the critic 4 times per actor update / env step
  (HIL-SERL uses 2, RLPD's state-based runs 20). Learning per env step keeps improving with UTD,
  but compute grows linearly with it; on a small CPU box a UTD of 20 makes training wall-clock
  bound (see ``bench/bench_sac_updates.py``). Raise it where compute is cheap.
* ``gamma=0.99``: SERL and RLPD both use 0.99 (SERL notes not to go below 0.95).
* ``init_temperature=0.01``: SERL's value for its robot tasks, whose rewards are O(1) per step
  (as our Panda tasks: dense rewards in [0, 1]). The temperature is learned (target entropy
  ``-|A|/2``) but only moves ~lr per update in log space, so the start matters in short runs:
  RLPD's 1.0 suits rewards of O(10) per step (e.g. Pendulum, locomotion).
* ``backup_entropy=True``: RLPD's SAC (the entropy bonus is part of the TD target).
* ``learning_starts=300``, ``random_steps=300``: a few hundred steps of data (and the state
  statistics) before the first update, as SERL's sim examples; with 20 demos the first
  thousand steps matter (PickCube: 0% at 1,000 env steps, 75% at 2,000).
* ``normalize_state=True``: positions come in metres and matter to the centimetre. Raw, a 2 cm
  difference moves a freshly initialised first layer by ~0.005, and SAC needed tens of thousands
  of updates to grow weights large enough to see the target (reach stayed at ~10% success after
  2,000 steps). Statistics are fitted once and then frozen, so the critic's inputs never drift.
* ``compile=True``: the learner is compute bound; ``torch.compile`` of the two loss functions
  makes the default config's critic updates ~1.25x faster on this project's 2-core Xeon
  (``bench/bench_sac_updates.py``) for a few seconds at the first update. It falls back to eager
  (with a warning) where torch.compile cannot build, e.g. without a C++ compiler.
* ``dtype="auto"``: bf16 autocast where the device multiplies bf16 natively (CPUs with AMX or
  AVX512-BF16, CUDA GPUs with bf16), float32 elsewhere. Hidden layers run in bf16; output layers
  (the Q heads, the actor's mean and log-std), parameters and optimiser state stay float32. On
  this project's 2-core AMX Xeon it makes compiled updates ~2x faster, which is what lets 10
  critics keep pace with SB3's 2 (issue 3, benchmark 4). With the default networks it learned
  as well as float32: PickCube state (``bench/bench_sac_learning.py``, seeds 0-2) reached 90% at
  8,000 / 3,000 / 4,000 env steps (float32: 3,000 / 5,000 / 5,000) in a median 3.0 minutes
  instead of 7.3; Pendulum (``train_sac``, 2,500 steps, seeds 0-4) ended at
  -110/-115/-123/-110/-121 against -111/-114/-109/-111/-143. Not so with small critics: 64x64
  with learning rates 1e-3 and temperature 1 (the Pendulum test's config) ended at
  -802/-483/-221/-333/-934 against -224/-328/-221/-221/-223 in float32. Keeping either hidden
  layer, the target or the actor in float32 did not fix it; the online critic's bf16 hidden
  layers did it. So measure before shrinking the networks in bf16, or set ``dtype="float32"``,
  which keeps full precision everywhere; ``bf16-autocast`` forces bf16 (emulated, and slower,
  without hardware support).
* ``gripper_critic=False``: off keeps plain SAC over the whole action. On, as HIL-SERL:
  ``grasp_penalty=0.02`` per gripper change (HIL-SERL's value, for rewards of O(1) per episode
  step or less) and greedy gripper choices while training (``grasp_epsilon=0``; exploration comes
  from the random steps, the demonstrations and interventions).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple

__all__ = ["ConfigError", "EncoderConfig", "SACConfig", "apply_overrides"]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range.

    The message always names the full dotted field (``sac.encoder.pooling``)."""


def _f(default: Any, help: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
       lo_open: bool = False, hi_open: bool = False, choices: Optional[Tuple[Any, ...]] = None,
       factory: bool = False) -> Any:
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": choices}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EncoderConfig:
    """Image encoder (one small conv net per camera, DrQ style) and proprioception embedding.

    Only used when the observation space has uint8 HWC image keys."""

    channels: int = _f(32, "conv channels in every layer", lo=1, hi=1024)
    num_layers: int = _f(4, "number of 3x3 conv layers (the first has stride `first_stride`)",
                         lo=1, hi=16)
    first_stride: int = _f(2, "stride of the first `strided_layers` conv layers (the rest: 1)",
                           lo=1, hi=8)
    strided_layers: int = _f(1, "how many leading conv layers use `first_stride` (DrQ: 1; 3 makes "
                             "a 128 px encoder ~10x cheaper on CPU)", lo=1, hi=16)
    pooling: str = _f("spatial_softmax", "how conv maps become a vector: 'spatial_softmax' "
                      "(2 coordinates per channel; cheap) or 'flatten' (DrQ's flatten+linear)",
                      choices=("spatial_softmax", "flatten"))
    feature_dim: int = _f(50, "per-camera feature size after Linear+LayerNorm+tanh", lo=1,
                          hi=4096)
    proprio_dim: int = _f(64, "size of the proprioception embedding (Linear+LayerNorm+tanh); "
                          "0 = concatenate the raw state instead", lo=0, hi=4096)
    augment_pad: int = _f(4, "DrQ random shift: replicate-pad by this many pixels and crop back "
                          "(0 = no augmentation)", lo=0, hi=64)

    def __post_init__(self) -> None:
        _validate(self, "sac.encoder")
        if self.strided_layers > self.num_layers:
            raise ConfigError(f"sac.encoder.strided_layers={self.strided_layers} must be <= "
                              f"sac.encoder.num_layers={self.num_layers}")


@dataclass(frozen=True)
class SACConfig:
    """Soft Actor-Critic with the RLPD choices SERL uses (and DrQ for images)."""

    hidden_dims: Tuple[int, ...] = _f((256, 256), "hidden layer sizes of actor and critic MLPs")
    activation: str = _f("relu", "MLP activation", choices=("relu", "tanh", "elu", "gelu",
                                                            "silu"))
    layer_norm: bool = _f(True, "LayerNorm after every hidden Linear (actor and critic)")
    n_critics: int = _f(10, "size of the critic ensemble", lo=1, hi=100)
    critic_subsample: int = _f(2, "target = min over this many distinct random critics "
                               "(at most n_critics)", lo=1, hi=100)
    utd: int = _f(4, "critic updates per env step (update-to-data ratio); the actor and "
                  "temperature are updated once per env step", lo=1, hi=1000)
    batch_size: int = _f(256, "minibatch size of one critic update", lo=1, hi=1_000_000)
    actor_lr: float = _f(3e-4, "actor Adam learning rate", lo=0.0, hi=1.0, lo_open=True)
    critic_lr: float = _f(3e-4, "critic (+ image encoder) Adam learning rate", lo=0.0, hi=1.0,
                          lo_open=True)
    temperature_lr: float = _f(3e-4, "temperature Adam learning rate", lo=0.0, hi=1.0,
                               lo_open=True)
    gamma: float = _f(0.99, "discount factor", lo=0.0, hi=1.0)
    tau: float = _f(0.005, "Polyak rate of the target critic (and target encoder)", lo=0.0,
                    hi=1.0, lo_open=True)
    init_temperature: float = _f(0.01, "initial entropy temperature alpha", lo=0.0, hi=1e6,
                                 lo_open=True)
    target_entropy: Optional[float] = _f(None, "entropy target; None = -|A|/2", lo=-1e6,
                                         hi=1e6)
    backup_entropy: bool = _f(True, "subtract alpha * log pi(a'|s') in the TD target")
    log_std_min: float = _f(-5.0, "lower bound of the actor's log std", lo=-30.0, hi=0.0)
    log_std_max: float = _f(2.0, "upper bound of the actor's log std", lo=-10.0, hi=10.0)
    demo_fraction: float = _f(0.5, "share of every minibatch drawn from the demo buffer "
                              "(when there is one)", lo=0.0, hi=1.0)
    replay_capacity: int = _f(1_000_000, "online replay capacity in frames/transitions "
                              "(images: ~bytes_per_frame x this); train_sac caps it at the run's steps", lo=1,
                              hi=10**10)
    learning_starts: int = _f(300, "env steps received before the first update", lo=0,
                              hi=10**10)
    random_steps: int = _f(300, "env steps acted uniformly at random at the start "
                           "(used by the training loop / actor)", lo=0, hi=10**10)
    normalize_state: bool = _f(True, "scale state features to zero mean and unit std (std floored "
                               "at 0.01) with statistics fitted once, at the first update, on the "
                               "demo and online data, then frozen and saved inside the policy")
    dtype: str = _f("auto", "compute precision: 'float32', 'bf16-autocast' (bfloat16 "
                    "autocast of hidden layers; output layers, params and optimizer stay "
                    "float32) or 'auto' (bf16-autocast where the device multiplies bf16 "
                    "natively, else float32)", choices=("auto", "float32", "bf16-autocast"))
    compile: bool = _f(True, "torch.compile the loss functions (a few seconds at the first "
                       "update; falls back to eager with a warning where it cannot build)")
    gripper_critic: bool = _f(False, "HIL-SERL's discrete gripper: the actor drives only the arm "
                              "(all action dims but the last); a DQN critic picks open/stay/close "
                              "for the last one (agents/grasp.py). Needs a 'gripper' observation")
    grasp_penalty: float = _f(0.02, "with gripper_critic: subtracted from the grasp critic's reward "
                              "at every step that changes the gripper state", lo=0.0, hi=10.0)
    grasp_epsilon: float = _f(0.0, "with gripper_critic: chance of a random gripper class per "
                              "training step (0 = greedy, as HIL-SERL)", lo=0.0, hi=1.0)
    encoder: EncoderConfig = _f(EncoderConfig, "image encoder options", factory=True)

    def __post_init__(self) -> None:
        _validate(self, "sac")
        if self.critic_subsample > self.n_critics:
            raise ConfigError(
                f"sac.critic_subsample={self.critic_subsample} must be <= sac.n_critics="
                f"{self.n_critics} (a subset is drawn without replacement)")
        if self.log_std_min >= self.log_std_max:
            raise ConfigError(f"sac.log_std_min={self.log_std_min} must be < sac.log_std_max="
                              f"{self.log_std_max}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "sac") -> "SACConfig":
        """Build from a (possibly partial, possibly nested) mapping; unknown keys are errors."""
        return _from_dict(cls, data, prefix)

    @classmethod
    def from_yaml(cls, path_or_text: "str | Path") -> "SACConfig":
        """Load from a YAML file (or YAML text). The mapping may sit under a top-level ``sac:``."""
        import yaml

        src = str(path_or_text)
        is_path = isinstance(path_or_text, Path) or (
            "\n" not in src and (src.endswith((".yaml", ".yml")) or Path(src).exists()))
        if is_path and not Path(src).exists():
            raise FileNotFoundError(f"config file {src} does not exist")
        text = Path(src).read_text() if is_path else src
        data = yaml.safe_load(text) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"sac: YAML must hold a mapping, got {type(data).__name__}")
        if set(data.keys()) == {"sac"}:
            data = data["sac"] or {}
        return cls.from_dict(data)

    @classmethod
    def from_overrides(cls, overrides: Iterable[str],
                       base: "Optional[SACConfig | Mapping[str, Any]]" = None) -> "SACConfig":
        """Apply ``key=value`` overrides (``sac.utd=8``, ``encoder.pooling=flatten``).

        Values are parsed as YAML scalars/lists (``8``, ``3e-4``, ``true``, ``null``,
        ``[128,128]``); a tuple field also takes ``128,128``."""
        data = base.to_dict() if isinstance(base, SACConfig) else dict(base or {})
        data = _deepcopy_dict(data)
        apply_overrides(data, overrides, "sac")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "SACConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists), suitable for JSON."""
        return _to_dict(self)

    @classmethod
    def describe(cls) -> str:
        """One line per field: name, type, default, help (for ``--help`` output)."""
        lines = []
        for prefix, klass in (("sac", cls), ("sac.encoder", EncoderConfig)):
            for f in fields(klass):
                if f.name == "encoder":
                    continue
                d = f.default_factory() if f.default is dataclasses.MISSING else f.default
                lines.append(f"{prefix}.{f.name} = {d!r}  # {f.metadata.get('help', '')}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- helpers


def _deepcopy_dict(d: Any) -> Any:
    if isinstance(d, Mapping):
        return {k: _deepcopy_dict(v) for k, v in d.items()}
    return d


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_to_dict(v) for v in obj]
    return obj


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of fields, got {type(data).__name__}")
    valid = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(
            f"unknown field {', '.join(f'{prefix}.{k}' for k in unknown)}; valid fields of "
            f"{prefix}: {', '.join(sorted(valid))}")
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, tp):
                kwargs[name] = value
            else:
                kwargs[name] = _from_dict(tp, value if value is not None else {},
                                          f"{prefix}.{name}")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix}: {e}") from None


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert obvious encodings (list -> tuple, int -> float, '128,128' -> tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, name)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            try:
                value = [int(v) for v in value]
            except ValueError:
                raise ConfigError(f"{name}: expected a list of integers, got {value!r}") from None
        if isinstance(value, (list, tuple)):
            return tuple(value)
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return "list of int"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _range_text(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return ""
    left = "(" if meta.get("lo_open") else "["
    right = ")" if meta.get("hi_open") else "]"
    return f"{left}{lo}, {hi}{right}"


def _validate(obj: Any, prefix: str) -> None:
    hints = _hints(type(obj))
    for f in fields(obj):
        name = f"{prefix}.{f.name}"
        value = getattr(obj, f.name)
        tp = hints[f.name]
        meta = f.metadata
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{name}: expected {tp.__name__}, got {type(value).__name__}")
            continue
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Union and type(None) in args:
            if value is None:
                continue
            (tp,) = [a for a in args if a is not type(None)]
            origin = typing.get_origin(tp)
        if origin is tuple:
            ok = isinstance(value, tuple) and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
            if not ok or len(value) == 0:
                raise ConfigError(f"{name}: expected a non-empty list of positive integers, "
                                  f"got {value!r}")
            continue
        if tp is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
            continue
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: expected an integer in {_range_text(meta)}, got "
                                  f"{value!r}")
        elif tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name}: expected a number in {_range_text(meta)}, got "
                                  f"{value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name}: must be finite, got {value!r}")
        elif tp is str:
            if not isinstance(value, str):
                raise ConfigError(f"{name}: expected a string, got {value!r}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{name}={value!r} is not allowed; choose one of "
                              f"{', '.join(repr(c) for c in choices)}")
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)) or \
                hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
            raise ConfigError(f"{name}={value!r} is out of range; allowed: {_range_text(meta)}")


def apply_overrides(data: dict, overrides: Iterable[str], prefix: str) -> dict:
    """Apply ``field=value`` / ``group.field=value`` overrides to a plain nested dict, in place.

    A leading ``prefix.`` is optional (``sac.utd=8`` == ``utd=8``); values are parsed as YAML
    scalars or lists (``8``, ``3e-4``, ``true``, ``null``, ``[128,128]``). Shared by every typed
    config with ``from_overrides``; validation happens when the dict is turned into the config."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like '{prefix}.field=value'")
        parts = [p for p in key.strip().split(".") if p]
        if parts and parts[0] == prefix:
            parts = parts[1:]
        if not parts:
            raise ConfigError(f"override {item!r} names no field")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{prefix}.{'.'.join(parts)}: '{prefix}.{p}' is not a group of fields")
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data
