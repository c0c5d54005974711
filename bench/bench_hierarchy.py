"""Language hierarchy benchmark (issue 7, Yell At Your Robot): success of the hierarchy alone, with
live corrections, and after fine-tuning the planner on the logged corrections. Prints a table.

Set-up (PickCube, MuJoCo, state observations):

* **Low-level policy**: consistency policy (1 step, MLP denoiser), horizon 4, 2 actions executed per
  chunk, conditioned on the MiniLM embedding of the instruction (``instruction_embedding``), trained
  on ``--low-demos`` (150) scripted demonstrations labelled per step, with noise 0.1 and labelled
  variations: 30% start with a small detour (small lateral corrections), in 50% the cube jumps away
  as the gripper comes down (recoveries), in 30% the gripper closes early on nothing (recoveries).
* **Planner**: MLP on 3 observations -> MiniLM embedding -> nearest instruction, trained on only
  ``--planner-demos`` (20) plain demonstrations (no jump, no detour): it never saw a recovery. That
  is deliberate, so that it makes mistakes of its own to correct (as YAY Robot's high-level policy
  does on situations it was not trained for).
* **Scenario**: the cube jumps 5-7 cm away as the gripper starts down on it (``--perturb jump``), on
  ``--seeds`` (50) evaluation seeds 10000+; the same seeds without the jump are the nominal column.
* **Scripted human**: watches the true state with the task's expert as its judgement and says the
  right instruction when the robot follows a wrong one for 2 steps (then waits 4); typed (exact
  text) or spoken (espeak-ng -> WAV -> pocketsphinx, the real recogniser).
* **Fine-tuning**: corrections logged on 50 *other* seeds (20000+, scripted, jump), then
  ``finetune_planner`` (600 steps, half of each batch from the corrections, half from the planner's
  20 demonstrations); evaluated without any human on the evaluation seeds.

    python bench/bench_hierarchy.py                  # ~6-8 min on 2 cores (3 planner seeds)
    python bench/bench_hierarchy.py --quick          # a smoke run, numbers meaningless

``--json`` prints every result as one JSON line at the end. Trained models and demos are cached in
``--out`` (delete it to start over).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from serl_ctrl.agents.imitation import train_imitation
from serl_ctrl.data.demos import record_demonstrations
from serl_ctrl.data.episodes import load_episodes
from serl_ctrl.envs import make_env
from serl_ctrl.language.corrections import CorrectionLog
from serl_ctrl.language.hierarchy import Hierarchy, load_low_level, run_episodes
from serl_ctrl.language.planner import PlannerRunner, finetune_planner, train_planner
from serl_ctrl.language.scripted_human import ExpertPlanner, ScriptedHuman, SpokenChannel
from serl_ctrl.language.session import make_perturbation

EVAL_SEED, COLLECT_SEED = 10_000, 20_000
LOW_CONFIG = {"horizon": 4, "n_action_steps": 2, "n_obs_steps": 2, "denoiser": "mlp", "mlp_hidden": (256, 256, 256),
              "lr": 1e-3, "batch_size": 128, "mode": "ct", "dsm_weight": 1.0, "num_inference_steps": 1}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def demos(out: Path, n: int, seed: int, **kw) -> Path:
    if not (out.is_dir() and any(out.glob("episode_*.npz"))):
        rep = record_demonstrations("pickcube", out, n, seed=seed, noise=0.1, **kw)
        log(f"demos {out.name}: {rep.successes}/{rep.attempts} expert successes, {rep.wall_s:.1f} s")
    return out


def low_level(root: Path, demo_dir: Path, steps: int) -> Path:
    out = root / "low"
    if not (out / "model.json").is_file():
        t = time.time()
        r = train_imitation("consistency", demo_dir, out, LOW_CONFIG, steps=steps, seed=0, language=True)
        log(f"low-level policy: {steps} steps in {time.time() - t:.0f} s, loss {r['metrics']['final_loss']:.3f}")
    return out


def evaluate(env, planner, policy, seeds: int, seed: int, perturb: str | None, human: str | None,
             log_to: CorrectionLog | None = None, speech=None) -> dict:
    h = Hierarchy(planner, policy, log=log_to)
    who = None
    if human is not None:
        who = ScriptedHuman(env.unwrapped.task, patience=2, cooldown=4)
    t = time.time()
    r = run_episodes(env, h, seeds, seed, human=who, speech=speech if human == "spoken" else None,
                     perturb=make_perturbation(perturb))
    r.pop("events")
    r["wall_s"] = time.time() - t
    r["jumped"] = int(sum(x["perturbed"] for x in r["records"]))
    r.pop("records")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=50, help="evaluation episodes (seeds 10000+)")
    p.add_argument("--collect", type=int, default=50, help="episodes of logged corrections (seeds 20000+)")
    p.add_argument("--low-demos", type=int, default=150)
    p.add_argument("--planner-demos", type=int, default=20)
    p.add_argument("--low-steps", type=int, default=5000)
    p.add_argument("--planner-steps", type=int, default=1000)
    p.add_argument("--planner-seeds", type=int, default=3, help="planners trained with different seeds")
    p.add_argument("--no-speech", action="store_true", help="skip the spoken-corrections row")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, not the method")
    p.add_argument("--out", default="runs/bench_hierarchy")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.collect, args.low_demos, args.planner_demos = 5, 5, 10, 3
        args.low_steps, args.planner_steps, args.planner_seeds = 100, 100, 1
        args.out = str(Path(args.out) / "quick")
    torch.set_num_threads(1)
    root = Path(args.out)
    t0 = time.time()
    low_dir = demos(root / "low_demos", args.low_demos, 0, detour=0.3, jump=0.5, fumble=0.3)
    plan_dir = demos(root / "planner_demos", args.planner_demos, 5000)
    policy = load_low_level(low_level(root, low_dir, args.low_steps))
    plan_eps = load_episodes(plan_dir)
    env = make_env("pickcube", backend="mujoco", obs="state")
    speech = None
    if not args.no_speech:
        try:
            speech = SpokenChannel(workdir=root / "wavs")
        except (RuntimeError, ImportError) as exc:
            log(f"no spoken row: {exc}")
    rows: dict[str, dict[str, list]] = {}

    def add(name: str, column: str, r: dict) -> None:
        rows.setdefault(name, {}).setdefault(column, []).append(r)
        log(f"  {name} [{column}]: {r['success_rate']:.0%}, {r['corrections_per_episode']:.2f} corrections/episode, "
            f"{r['mean_steps']:.1f} steps, {r['wall_s']:.1f} s")

    expert = ExpertPlanner(env)
    for column, perturb in (("jump", "jump"), ("nominal", None)):
        add("scripted expert names the instructions (upper bound)", column,
            evaluate(env, expert, policy, args.seeds, EVAL_SEED, perturb, None))
    for ps in range(args.planner_seeds):
        log(f"planner seed {ps}")
        planner, m = train_planner(plan_eps, {"train_steps": args.planner_steps}, seed=ps)
        log(f"  planner: {m['n_examples']} examples, train accuracy {m['train_accuracy']:.0%}, {m['wall_s']:.0f} s")
        runner = PlannerRunner(planner)
        for column, perturb in (("jump", "jump"), ("nominal", None)):
            add("hierarchy alone", column, evaluate(env, runner, policy, args.seeds, EVAL_SEED, perturb, None))
        add("+ live corrections, typed (scripted human)", "jump",
            evaluate(env, runner, policy, args.seeds, EVAL_SEED, "jump", "scripted"))
        if speech is not None:
            add("+ live corrections, spoken (espeak-ng -> pocketsphinx)", "jump",
                evaluate(env, runner, policy, args.seeds, EVAL_SEED, "jump", "spoken", speech=speech))
        corr = CorrectionLog(planner.obs_keys, planner.n_obs_steps, {"bench": "hierarchy", "planner_seed": ps})
        collected = evaluate(env, runner, policy, args.collect, COLLECT_SEED, "jump", "scripted", log_to=corr)
        corr.save(root / f"corrections_{ps}.npz")
        tuned = copy.deepcopy(planner)
        fm = finetune_planner(tuned, corr, plan_eps, seed=ps)
        log(f"  collected {corr.summary()['corrections']} corrections ({len(corr)} entries) on seeds "
            f"{COLLECT_SEED}+ ({collected['success_rate']:.0%} success while collecting); fine-tuned "
            f"{fm['wall_s']:.0f} s, accuracy on corrected states {fm['correction_accuracy_before']:.0%} -> "
            f"{fm['correction_accuracy_after']:.0%}, on demos {fm['demo_accuracy_before']:.0%} -> "
            f"{fm['demo_accuracy_after']:.0%}")
        rows.setdefault("_finetune", {}).setdefault("jump", []).append({**fm, "collect_success": collected["success_rate"],
                                                                        "corrections": corr.summary()})
        trunner = PlannerRunner(tuned)
        for column, perturb in (("jump", "jump"), ("nominal", None)):
            add("after fine-tuning on the logged corrections (no human)", column,
                evaluate(env, trunner, policy, args.seeds, EVAL_SEED, perturb, None))
        add("after fine-tuning + live corrections, typed", "jump",
            evaluate(env, trunner, policy, args.seeds, EVAL_SEED, "jump", "scripted"))
    env.close()

    def cell(rs: list | None, key: str = "success_rate", pct: bool = True) -> str:
        if not rs:
            return ""
        v = np.array([r[key] for r in rs], float)
        fmt = (lambda x: f"{x:.0%}") if pct else (lambda x: f"{x:.1f}")
        return fmt(v.mean()) if len(v) == 1 else f"{fmt(v.mean())} ({fmt(v.min())}-{fmt(v.max())})"

    n_ps = args.planner_seeds
    print(f"\n### Language hierarchy on PickCube, {args.seeds} seeds (10000+); the cube jumps 5-7 cm as the "
          f"gripper starts down on it; mean (min-max) over {n_ps} planner seed(s)\n")
    print("| | success, cube jumps | success, no jump | corrections / episode (jump) | mean steps (jump) |")
    print("|---|---|---|---|---|")
    for name, cols in rows.items():
        if name.startswith("_"):
            continue
        print(f"| {name} | {cell(cols.get('jump'))} | {cell(cols.get('nominal'))} | "
              f"{cell(cols.get('jump'), 'corrections_per_episode', False)} | "
              f"{cell(cols.get('jump'), 'mean_steps', False)} |")
    ft = rows["_finetune"]["jump"]
    print(f"\nFine-tuning data: {np.mean([f['corrections']['corrections'] for f in ft]):.0f} corrections "
          f"({np.mean([f['corrections']['entries'] for f in ft]):.0f} logged observation histories) from "
          f"{args.collect} episodes on seeds {COLLECT_SEED}+; planner accuracy on the corrected states "
          f"{np.mean([f['correction_accuracy_before'] for f in ft]):.0%} -> "
          f"{np.mean([f['correction_accuracy_after'] for f in ft]):.0%}, on its demonstrations "
          f"{np.mean([f['demo_accuracy_before'] for f in ft]):.0%} -> {np.mean([f['demo_accuracy_after'] for f in ft]):.0%}. "
          f"Wall time {time.time() - t0:.0f} s (load {os.getloadavg()[0]:.1f}).")
    if speech is not None:
        heard = {said: (r.command.instruction if r.command is not None else None) for said, r in speech._cache.items()}
        wrong = {k: v for k, v in heard.items() if v != k}
        print(f"Spoken: {len(heard)} distinct utterances synthesised (espeak-ng en-us) and recognised; "
              f"{len(heard) - len(wrong)} recognised as said" + (f", misheard: {wrong}" if wrong else "") + ".")
    if args.json:
        print(json.dumps({"args": vars(args), "rows": rows}, default=float))


if __name__ == "__main__":
    main()
