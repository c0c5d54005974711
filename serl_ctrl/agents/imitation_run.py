"""A whole imitation run, as ``serl-ctrl train --algo diffusion|consistency|bc`` does it:
train on demonstrations, evaluate on fixed seeds, export ``policy.onnx`` with its model card.

The exported graph is the policy's ``deploy`` module: observations in (uint8 images, state in env
units; normalisation inside), the action chunk out, with the sampler's noise fixed in the graph so
torch and onnxruntime agree exactly (see ``imitation.DeployModule``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import dataclasses

from ..export.onnx_export import export_onnx, git_commit, write_card
from .imitation import ConfigError, ImitationPolicy, load_policy, obs_mode_for, rollout_success, runtime_policy, train_imitation

EVAL_SEED = 10_000


def deploy_spec(policy: ImitationPolicy, task: str | None, extra: Mapping[str, Any]):
    """The ``PolicySpec`` of a policy's exported graph: its observations (with history), chunking,
    action space, and the task and observation mode it runs in (``obs_mode`` only for a known
    serl_ctrl task; ``serl-ctrl export`` and training share this)."""
    from ..envs.tasks import TASKS

    obs_mode = obs_mode_for(policy, task) if task and task.lower() in TASKS else None
    return dataclasses.replace(runtime_policy(policy).spec, task=task, obs_mode=obs_mode, extra=dict(extra))


def run_imitation(algo: str, demos: str, out: str | Path, task: str | None = None, backend: str = "mujoco",
                  steps: int | None = None, seed: int = 0, overrides: Mapping[str, Any] | None = None,
                  eval_episodes: int = 20, progress: Callable | None = None, command: str | None = None,
                  export: bool = True, language: bool = False, device: str = "auto", checkpoint_every: int = 0,
                  resume: bool = False) -> dict:
    """Train, evaluate, export. With ``language``, the policy is conditioned on the instruction labels
    (``instruction_embedding``) and evaluated with the task's scripted expert naming the instructions
    (:func:`serl_ctrl.language.hierarchy.expert_instruction_success`); the instructions it learned go
    into the spec's ``extra`` (``serl-ctrl run --planner`` reads them). ``checkpoint_every`` /
    ``resume``: checkpoints in ``out/ckpt`` every that many gradient steps, and continuing from them."""
    if export and algo == "diffusion":  # refuse before training, not after: exported samplers are deterministic
        from .diffusion import DiffusionConfig

        eta = DiffusionConfig.from_dict(dict(overrides or {})).eta
        if eta > 0:
            raise ConfigError(f"eta={eta}: policy.onnx holds a deterministic DDIM sampler; "
                              "train with eta=0 (the default) or pass --no-export")
    trained = train_imitation(algo, demos, out, overrides, steps=steps, seed=seed, progress=progress,
                              language=language, device=device, checkpoint_every=checkpoint_every, resume=resume)
    return finish_run(algo, trained, out, demos, task=task, backend=backend, eval_episodes=eval_episodes,
                      progress=progress, command=command, export=export, language=language)


def finish_run(algo: str, trained: Mapping[str, Any], out: str | Path, demos: str | Path, *, task: str | None = None,
               backend: str = "mujoco", eval_episodes: int = 20, progress: Callable | None = None,
               command: str | None = None, export: bool = True, language: bool = False,
               extra: Mapping[str, Any] | None = None) -> dict:
    """Evaluate and export a trained policy: the second half of every imitation run, shared by
    ``run_imitation`` and Consistency-AC (whose actor is an ordinary consistency policy).

    ``trained`` is what ``train_imitation`` returns (``checkpoint``, ``metrics``); ``algo`` names
    the run in the result and the model card; ``extra`` joins the exported spec's ``extra``."""
    out = Path(out)
    policy = load_policy(trained["checkpoint"])
    task = task or policy.metadata.get("task")
    result: dict[str, Any] = {"algo": algo, "checkpoint": trained["checkpoint"], "run": str(out),
                              **{k: v for k, v in trained["metrics"].items() if isinstance(v, (int, float, str))}}
    if language:
        result["instructions"] = list(policy.metadata.get("instructions", []))
    if not export:
        if task and language:
            from ..language.hierarchy import expert_instruction_success, load_low_level

            ev = expert_instruction_success(load_low_level(out), task, backend, eval_episodes, EVAL_SEED, progress)
            result.update(success_rate=ev["success_rate"], eval_episodes=eval_episodes, task=task,
                          eval_instructions="scripted expert")
        elif task:
            ev = rollout_success(policy, task, backend, eval_episodes, seed=EVAL_SEED, progress=progress)
            result.update(success_rate=ev["success_rate"], eval_episodes=eval_episodes, task=task)
        return result
    spec_extra = {"command": command, "commit": git_commit(), "demos": str(demos), **dict(extra or {})}
    if language:
        spec_extra["instructions"] = list(policy.metadata.get("instructions", []))
    spec = deploy_spec(policy, task, spec_extra)
    obs_mode = spec.obs_mode
    path = out / "policy.onnx"
    report = export_onnx(policy.export_modules()["deploy"], spec, path)
    card: dict[str, Any] = {}
    if task:
        # The card describes the file beside it: evaluate the exported graph, as the robot runs it.
        from ..runtime.evaluate import evaluate, make_eval_env
        from ..runtime.onnx_policy import OnnxPolicy

        deployed = OnnxPolicy(path, verify_card=False)
        if language:  # the scripted expert names the instructions
            from ..language.hierarchy import expert_instruction_success

            ev = expert_instruction_success(deployed, task, backend, eval_episodes, EVAL_SEED, progress)
        else:
            env = make_eval_env(deployed, task, backend=backend)
            try:
                ev = evaluate(deployed, env, eval_episodes, seed=EVAL_SEED, progress=progress)
            finally:
                env.close()
        card = {"success_rate": ev["success_rate"], "eval_episodes": eval_episodes, "eval_seeds": f"{EVAL_SEED}+",
                "eval_backend": backend, "infer_ms_p50": ev["infer_ms_p50"]}
        result.update(task=task, **card)
    write_card(path, algo=algo, task=task, obs=obs_mode,
               sampler_steps=getattr(policy.config, "num_inference_steps", None),
               parity_max_abs_diff=report.parity_max_abs_diff, command=command, commit=git_commit(), **card)
    result["policy"] = str(path)
    return result

