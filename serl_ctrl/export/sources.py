"""What ``serl-ctrl export`` exports: a run folder or checkpoint, loaded as an :class:`Exportable`.

Accepted paths (the first match wins):

* an imitation run folder (``RUN/model.safetensors`` + ``RUN/model.json``, as ``serl-ctrl train
  --algo diffusion|consistency|bc`` writes it), or that pair named directly (``RUN/model``,
  ``RUN/model.json``, ``RUN/model.safetensors``);
* a SAC run folder (``RUN/checkpoints/``: the newest checkpoint), a checkpoint folder, or one
  checkpoint (``ckpt_<step>.json`` or ``.safetensors``).

An :class:`Exportable` holds two torch modules. ``module`` is what is traced into the graph (for
``--sampler runtime`` only the diffusion denoiser; for ``--sampler graph-noise`` the unrolled
sampler with its noise as inputs); ``reference`` maps observations to the action chunk and is what
the exported file, run by the onnxruntime :class:`~serl_ctrl.runtime.Policy` (which feeds zero
noise unless given a ``sampler_seed``), must reproduce: the unrolled sampler with zero noise.

``--sampler graph-noise`` exists because zero noise (the default graph's) collapses multimodal
demonstrations onto one mode or between them: on Avoid (pass a pillar left or right) a 3-step
consistency policy succeeds 94-96% with fresh noise per chunk and 68-70% with zeros (1 step: 62%
vs 20-34%). The file keeps one graph run per chunk and lets the runtime feed seeded noise. The rest is
what the card and the parity check need: recorded observations (the run's demonstrations or
``--episodes``) and what the run already measured.

Bad input (no such path, no checkpoint, an unknown policy class, options that do not apply to
the policy) raises ValueError or FileNotFoundError naming the path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..runtime.onnx_policy import read_card
from ..runtime.spec import PolicySpec
from .onnx_export import git_commit, recorded_observations

SAMPLERS = ("graph", "graph-noise", "runtime")
RECORDED_EPISODES = 4  # episodes read for recorded observations (image episodes are large)
RECORDED_SAMPLES = 16


@dataclass
class Exportable:
    """A policy ready to export: see the module docstring."""

    algo: str
    module: torch.nn.Module
    reference: torch.nn.Module
    spec: PolicySpec
    source: Path
    sampler: str | None = None          # a SAMPLERS entry for chunk samplers, None otherwise
    sampler_steps: int | None = None
    recorded: list[dict[str, np.ndarray]] = field(default_factory=list)
    recorded_from: str | None = None
    card: dict[str, Any] = field(default_factory=dict)


def load_exportable(path: str | Path, *, sampler: str | None = None, steps: int | None = None,
                    episodes: str | Path | None = None, task: str | None = None, obs: str | None = None,
                    command: str | None = None) -> Exportable:
    """Load the policy at ``path`` (module docstring) for export.

    Args:
        sampler: chunk samplers only: ``"graph"`` (default; the sampler unrolled in the graph, zero
            noise), ``"graph-noise"`` (unrolled, its noise as graph inputs the runtime feeds) or
            ``"runtime"`` (diffusion: the graph is the denoiser, the runtime runs DDIM).
        steps: sampler steps (diffusion DDIM steps, consistency steps; default: the policy's).
        episodes: a folder of recorded episodes for parity (default: the run's demonstrations).
        task, obs: the task (and SAC observation mode) when the run does not record them.
        command: the command line, stored in the file's metadata.
    """
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    kind, where = _classify(Path(path))
    extra = {"command": command, "commit": git_commit(), "source": str(path)}
    if kind == "imitation":
        src = _imitation(where, sampler, steps, task, extra)
    else:
        if sampler is not None or steps is not None:
            raise ValueError(f"{path} is a SAC policy: --sampler and --steps apply to diffusion and "
                             "consistency policies")
        src = _sac(where, task, obs, extra)
    ep_dir = Path(episodes) if episodes is not None else _default_episodes(src)
    if ep_dir is not None:
        src.recorded += _recorded(src.spec, ep_dir, required=episodes is not None)
        src.recorded_from = str(ep_dir) if src.recorded else None
    return src


# ----------------------------------------------------------------------------- what the path is


def _classify(p: Path) -> tuple[str, Path]:
    """``("imitation", RUN/model)`` or ``("sac", checkpoint json)``."""
    from ..agents.checkpoint import FORMAT as CKPT_FORMAT
    from ..agents.checkpoint import latest_checkpoint
    from ..agents.imitation import FORMAT as IMITATION_FORMAT

    if p.is_dir():
        if (p / "model.json").is_file():
            return "imitation", p / "model"
        for folder in (p / "checkpoints", p):
            latest = latest_checkpoint(folder)
            if latest is not None:
                return "sac", latest
        raise FileNotFoundError(f"{p} holds no policy: expected model.json + model.safetensors (imitation run) "
                                "or checkpoints/ckpt_<step>.json (SAC run)")
    desc = p.with_suffix(".json") if p.suffix in (".json", ".safetensors") else p.with_name(p.name + ".json")
    if not desc.is_file():
        raise FileNotFoundError(f"no run or checkpoint at {p}")
    try:
        fmt = json.loads(desc.read_text(encoding="utf-8")).get("format")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ValueError(f"{desc} is not a serl_ctrl policy or checkpoint (not a JSON object)") from None
    if fmt == IMITATION_FORMAT:
        return "imitation", desc.with_suffix("")
    if fmt == CKPT_FORMAT:
        return "sac", desc
    raise ValueError(f"{desc} is not a serl_ctrl policy or checkpoint (format {fmt!r})")


def _named(path: Path, exc: Exception) -> ValueError:
    message = str(exc)
    return ValueError(message if str(path) in message else f"{path}: {message}")


# ----------------------------------------------------------------------------- imitation


def _imitation(model: Path, sampler: str | None, steps: int | None, task: str | None,
               extra: dict[str, Any]) -> Exportable:
    from ..agents.imitation import ImitationPolicy
    from ..agents.imitation_run import deploy_spec

    try:
        policy = ImitationPolicy.load(model)
    except (ValueError, KeyError, TypeError) as exc:  # unknown algo, mismatched tensors, bad config
        raise _named(model, exc) from None
    algo = policy.algo
    if algo == "diffusion":
        k = steps or policy.config.num_inference_steps
        try:
            modules = policy.export_modules(k)
        except ValueError as exc:  # more steps than the schedule has
            raise _named(model, exc) from None
        reference = modules["deploy"]
        runtime = sampler == "runtime"
        module, noise = _graph_module(reference, modules["denoiser"] if runtime else modules["unrolled"], sampler)
        sampler_spec = policy.sampler_spec(k) if runtime else None
    elif algo == "consistency":
        if sampler == "runtime":
            raise ValueError(f"{model}: --sampler runtime exports a diffusion denoiser; a consistency policy's "
                             "1-k steps are always unrolled in the graph (choose them with --steps)")
        if steps is not None and steps != policy.config.num_inference_steps:
            keep = policy.config.sample_sigmas if len(policy.config.sample_sigmas) == steps else ()
            policy.config = policy.config.replace(num_inference_steps=steps, sample_sigmas=keep)
        k = policy.config.num_inference_steps
        modules = policy.export_modules()
        reference = modules["deploy"]
        module, noise = _graph_module(reference, modules["sampler"], sampler)
        sampler_spec = None
    else:
        if sampler is not None or steps is not None:
            raise ValueError(f"{model}: a {algo!r} policy has no sampler; --sampler and --steps apply to "
                             "diffusion and consistency policies")
        k = None
        module = reference = policy.export_modules()["deploy"]
        sampler_spec, noise = None, {}
    task = task or policy.metadata.get("task")
    spec = deploy_spec(policy, task, {**extra, "demos": policy.metadata.get("demos")})
    spec = dataclasses.replace(spec, sampler=sampler_spec, noise_inputs=noise)
    chosen = None if k is None else (sampler or "graph")
    return Exportable(algo, module.eval(), reference.eval(), spec, model, chosen, k,
                      card=_run_card(model.parent, chosen, k))


def _graph_module(deploy: torch.nn.Module, inner: torch.nn.Module,
                  sampler: str | None) -> tuple[torch.nn.Module, dict[str, tuple[int, ...]]]:
    """What is traced, with its noise inputs: the zero-noise ``deploy`` module for ``--sampler graph``;
    else ``inner`` taking named inputs: the runtime's denoiser (``runtime``), or the unrolled sampler
    (``graph-noise``) whose inputs after the observations are its noise (diffusion ``noise``,
    consistency ``noise_0..noise_{k-1}``), each one ``(horizon, action_dim)`` chunk."""
    from ..agents.imitation import NamedInputs

    if sampler not in ("runtime", "graph-noise"):
        return deploy, {}
    noise = inner.input_names[len(inner.obs_keys):] if sampler == "graph-noise" else []
    shape = (inner.policy.horizon, inner.policy.action_dim)
    return NamedInputs(inner), {name: shape for name in noise}


def _run_card(run: Path, sampler: str | None, steps: int | None) -> dict[str, Any]:
    """The training run's own evaluation, when this export is the same graph as the run's
    ``policy.onnx`` (same sampler kind and steps): it then measured this very function."""
    card = read_card(run / "policy.onnx") if (run / "policy.onnx").is_file() else None
    if (not card or card.get("success_rate") is None or sampler in ("runtime", "graph-noise")
            or card.get("sampler_steps") != steps):
        return {}
    fields = ("success_rate", "eval_episodes", "eval_seeds", "eval_backend")
    return {**{k: card[k] for k in fields if k in card},
            "success_source": f"{run / 'policy.json'} (the run's evaluation of the same graph)"}


# ----------------------------------------------------------------------------- SAC


def _sac(ckpt: Path, task: str | None, obs: str | None, extra: dict[str, Any]) -> Exportable:
    from ..agents.checkpoint import CheckpointError, read_actor_state
    from ..agents.config import ConfigError
    from ..agents.sac import SACAgent
    from ..agents.train_sac import RunConfig, make_train_env, sac_policy_spec

    try:
        weights, meta = read_actor_state(ckpt)
    except CheckpointError as exc:
        raise _named(ckpt, exc) from None
    run = dict(meta.get("extra", {}).get("run") or _run_config_beside(ckpt) or {})
    if not run and task is None:
        raise ValueError(f"{ckpt}: the checkpoint records no run configuration (task, observations) and no "
                         "config.json is beside it: pass --task (and --obs)")
    run.update({k: v for k, v in {"task": task, "obs": obs}.items() if v is not None})
    if task is not None:
        run["env_id"] = None
    if meta.get("config") is not None:
        run["sac"] = meta["config"]
    try:
        cfg = RunConfig.from_dict(run)
    except ConfigError as exc:
        raise _named(ckpt, exc) from None
    env = make_train_env(cfg, learned_reward=False)  # export needs the spaces, not a reward model
    try:
        agent = SACAgent(env.observation_space, env.action_space, cfg.sac, seed=cfg.seed)
        try:
            agent.load_actor_state_dict(weights)
        except RuntimeError as exc:  # torch's size / key mismatch
            raise ValueError(f"{ckpt}: its weights do not fit a SAC policy for task={cfg.task or cfg.env_id} "
                             f"obs={cfg.obs} ({str(exc).splitlines()[0]})") from None
        spec = sac_policy_spec(env, cfg, {**extra, "env_steps": meta.get("step"), "demos": cfg.demos})
        first, _ = env.reset(seed=0)
    finally:
        env.close()
    items = first.items() if isinstance(first, dict) else [("obs", first)]
    module = agent.policy_state()
    src = Exportable("sac", module, module, spec, ckpt, recorded=[{k: np.asarray(v)[None] for k, v in items}])
    rows = meta.get("extra", {}).get("trainer", {}).get("rows") or []
    if rows:
        src.card = {"success_rate": rows[-1]["success_rate"], "eval_episodes": cfg.eval_episodes,
                    "eval_seeds": "10000+", "eval_backend": cfg.backend,
                    "success_source": f"{ckpt} (the run's last evaluation of the deterministic actor, "
                                      f"this graph's function, at {rows[-1]['env_steps']} env steps)"}
    return src


def _run_config_beside(ckpt: Path) -> Mapping[str, Any] | None:
    """``RUN/config.json`` for ``RUN/checkpoints/ckpt_<step>.json``."""
    for folder in (ckpt.parent.parent, ckpt.parent):
        path = folder / "config.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


# ----------------------------------------------------------------------------- recorded observations


def _default_episodes(src: Exportable) -> Path | None:
    demos = src.spec.extra.get("demos")
    return Path(demos) if demos and Path(demos).is_dir() else None


def _recorded(spec: PolicySpec, folder: Path, required: bool) -> list[dict[str, np.ndarray]]:
    """Observations from the first few episodes in ``folder``; with ``required`` (``--episodes``)
    a missing folder or mismatched episodes are errors, otherwise the run's demos are best effort."""
    from ..data.episodes import list_episodes, load_episode

    try:
        episodes = [load_episode(p) for p in list_episodes(folder)[:RECORDED_EPISODES]]
        if not episodes:
            raise FileNotFoundError(f"no episodes (*.npz) in {folder}")
        return recorded_observations(spec, episodes, RECORDED_SAMPLES)
    except (FileNotFoundError, ValueError) as exc:
        if required:
            raise _named(folder, exc) from None
        return []
