"""SAC sample efficiency and wall-clock: env steps (and seconds) until 90% success (``--target``).

Issue #3's benchmarks 1-3 (and 5 with ``--obs pixels --target 0.8``), side by side in one run on
this machine:

* ``ours``        SAC + RLPD choices (``SACConfig`` defaults) with ``--demos`` scripted demos,
* ``ours-float32`` ``ours`` with ``sac.dtype=float32`` (the default, ``auto``, runs bf16 autocast
                  where the CPU multiplies bf16 natively; not in the default ``--variants``),
* ``ours-nodemo`` the same without demonstrations,
* ``sb3``         Stable-Baselines3 SAC with its defaults (2 critics, UTD 1, no demos) on the
                  same environment (observations flattened), same budget and evaluation,

on ``--task`` (PickCube by default), for each of ``--seeds``. Every ``--eval-every`` env steps
the deterministic policy runs ``--eval-episodes`` episodes on fixed seeds (10000+); "steps to 90%"
is the first evaluation at or above 90% (``--target``). ``--obs pixels`` trains from the front and
wrist cameras (128 px) and proprioception, with pixel demos; SB3 is not run there. Wall-clock counts
training and evaluation, as a user would wait for it. Prints a markdown table (per variant: median steps and minutes to 90% over the
seeds, each seed's value, final success) and writes a learning-curve PNG and a JSON of all curves.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_sac_learning.py [--task pickcube] [--reward dense]
        [--seeds 0 1 2] [--steps 10000] [--variants ours,ours-nodemo,sb3] [--out runs/bench_sac]
        [--stop-at-target] [--obs pixels --target 0.8 --set sac.batch_size=128 ...]
    python bench/bench_sac_learning.py --report DIR [DIR ...] --out DIR   # merge runs made separately
                                                        # (titled from their settings.json)

Slow by nature (each run is minutes to tens of minutes on 2 cores); runs are sequential so each
gets the whole machine, as the wall-clock goal assumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")

VARIANTS = ("ours", "ours-float32", "ours-nodemo", "sb3")
DEFAULT_VARIANTS = ("ours", "ours-nodemo", "sb3")
EVAL_SEED = 10_000


def _to_target(rows: list[dict], target: float) -> tuple[int | None, float | None]:
    hit = next((r for r in rows if r["success_rate"] >= target), None)
    return (hit["env_steps"], hit["wall_s"]) if hit else (None, None)


def run_ours(args, seed: int, demos: str | None, out: Path, extra: tuple = ()) -> list[dict]:
    from serl_ctrl.agents.train_sac import RunConfig, train_sac

    cfg = RunConfig.load(None, {"task": args.task, "obs": args.obs, "reward": args.reward, "steps": args.steps,
                                "seed": seed, "demos": demos, "eval_every": args.eval_every,
                                "eval_episodes": args.eval_episodes, "checkpoint_every": args.steps,
                                "threads": args.threads},
                         [*args.set, *extra])
    train_sac(cfg, out, export=False, stop_at=args.target if args.stop_at_target else None)
    import csv

    with open(out / "metrics.csv") as f:
        return [{"env_steps": int(r["env_steps"]), "success_rate": float(r["success_rate"]),
                 "wall_s": float(r["wall_s"])} for r in csv.DictReader(f)]


def run_sb3(args, seed: int) -> list[dict]:
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from serl_ctrl.agents.train_sac import evaluate_agent
    from serl_ctrl.envs import make_env

    torch.set_num_threads(1)
    env = gym.wrappers.FlattenObservation(make_env(args.task, reward=args.reward))
    eval_env = gym.wrappers.FlattenObservation(make_env(args.task, reward=args.reward))
    model = SAC("MlpPolicy", env, seed=seed, verbose=0)
    rows: list[dict] = []
    start = time.perf_counter()

    class Policy:
        def act(self, obs, deterministic=True):
            return model.predict(obs, deterministic=True)[0]

    class Eval(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % args.eval_every == 0:
                ev = evaluate_agent(Policy(), eval_env, args.eval_episodes, seed=EVAL_SEED)
                rows.append({"env_steps": self.num_timesteps, "success_rate": ev["success_rate"],
                             "wall_s": round(time.perf_counter() - start, 2)})
                print(f"  sb3 seed {seed}: {self.num_timesteps} steps, success {ev['success_rate']:.0%}",
                      file=sys.stderr, flush=True)
                if args.stop_at_target and ev["success_rate"] >= args.target:
                    return False
            return True

    model.learn(args.steps, callback=Eval())
    return rows


def plot(curves: dict, path: Path, title: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"ours": "tab:blue", "ours-float32": "tab:purple", "ours-nodemo": "tab:green", "sb3": "tab:red"}
    for (variant, seed), rows in curves.items():
        ax.plot([r["env_steps"] for r in rows], [r["success_rate"] for r in rows], color=colors.get(variant),
                alpha=0.8, label=variant if seed == min(s for v, s in curves if v == variant) else None)
    ax.axhline(target, color="gray", ls=":", lw=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (eval)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="pickcube")
    p.add_argument("--obs", default="state", choices=("state", "pixels"),
                   help="pixels: front + wrist 128 px cameras and proprioception (pixel demos; no sb3)")
    p.add_argument("--target", type=float, default=0.9, help="success rate whose first evaluation counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads of our runs")
    p.add_argument("--reward", default="dense", choices=("sparse", "dense"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--demos", type=int, default=20, help="scripted demonstrations for 'ours'")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--set", action="append", default=[], help="sac.field=value for ours (repeatable)")
    p.add_argument("--stop-at-target", action="store_true", help="stop a run at its first evaluation >= --target")
    p.add_argument("--out", default="runs/bench_sac")
    p.add_argument("--report", nargs="+", metavar="DIR",
                   help="no training: merge the curves.json of earlier runs (e.g. one per variant, run "
                        "separately) into one table and one plot in --out")
    args = p.parse_args(argv)
    if args.report:
        return report(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = sorted(set(variants) - set(VARIANTS))
    if bad:
        p.error(f"unknown variant(s) {bad}; valid: {', '.join(VARIANTS)}")
    if args.obs == "pixels" and "sb3" in variants:
        p.error("sb3 runs on state observations only: drop it from --variants with --obs pixels")
    if not 0.0 < args.target <= 1.0:
        p.error(f"--target must be in (0, 1], got {args.target}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).write_text(json.dumps(settings(args), indent=1))

    from serl_ctrl.data.demos import record_demonstrations

    demo_dir = Path(tempfile.mkdtemp(prefix="bench_sac_demos_"))
    record_demonstrations(args.task, demo_dir, args.demos, obs=args.obs, reward=args.reward, seed=123)

    curves: dict = {}
    for variant in variants:
        for seed in args.seeds:
            print(f"[bench] {variant} seed {seed} ...", file=sys.stderr, flush=True)
            run_dir = out / f"{variant}_seed{seed}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            if variant == "sb3":
                rows = run_sb3(args, seed)
            else:
                rows = run_ours(args, seed, None if variant == "ours-nodemo" else str(demo_dir), run_dir,
                                ("sac.dtype=float32",) if variant == "ours-float32" else ())
            curves[(variant, seed)] = rows
            (out / "curves.json").write_text(json.dumps({f"{v}/{s}": r for (v, s), r in curves.items()}, indent=1))

    print(f"\n{_title(args)}; evaluation every {args.eval_every} steps over {args.eval_episodes} episodes; "
          f"budget {args.steps} steps\n")
    table(curves, variants, out, _title(args), args.target)
    return 0


SETTINGS = "settings.json"  # what a run measured, so --report titles it without the flags repeated
TITLED = ("task", "obs", "reward", "demos")


def settings(args) -> dict:
    return {k: getattr(args, k) for k in (*TITLED, "steps", "eval_every", "eval_episodes")}


def report(args) -> int:
    """Merge earlier runs' curves.json into one table and plot (budgets per variant: its last row).

    The title comes from the runs' settings.json (runs made before it existed: from the flags).
    Runs that measured different tasks, observations, rewards or demo counts are refused, since
    one table of them would compare unlike things."""
    curves: dict = {}
    merged: dict | None = None
    first = None
    for d in args.report:
        path = Path(d) / "curves.json"
        if not path.is_file():
            raise SystemExit(f"--report: {path} does not exist")
        spath = Path(d) / SETTINGS
        if spath.is_file():
            got = {k: json.loads(spath.read_text()).get(k) for k in TITLED}
            if merged is None:
                merged, first = got, spath
            elif got != merged:
                diff = ", ".join(f"{k} {merged[k]!r} vs {got[k]!r}" for k in TITLED if got[k] != merged[k])
                raise SystemExit(f"--report: {spath} and {first} measured different settings ({diff})")
        for key, rows in json.loads(path.read_text()).items():
            variant, seed = key.rsplit("/", 1)
            curves[(variant, int(seed))] = rows
    if merged is not None:
        for k, v in merged.items():
            setattr(args, k, v)
    variants = [v for v in VARIANTS if any(k[0] == v for k in curves)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curves.json").write_text(json.dumps({f"{v}/{s}": r for (v, s), r in curves.items()}, indent=1))
    if merged is not None:
        (out / SETTINGS).write_text(json.dumps(merged, indent=1))
    print(f"\n{_title(args)}\n")
    table(curves, variants, out, _title(args), args.target)
    return 0


def _title(args) -> str:
    return f"{args.task} {args.obs}, {args.reward} reward, {args.demos} demos for 'ours'"


def table(curves: dict, variants: list, out: Path, title: str, target: float = 0.9) -> None:
    plot(curves, out / "learning_curves.png", title, target)
    print(f"| variant | seeds | median steps to {target:.0%} | median minutes to {target:.0%} | per seed (steps / min) "
          f"| final success |")
    print("|---|---|---|---|---|---|")
    for variant in variants:
        seeds = sorted(s for v, s in curves if v == variant)
        per = [(s, *_to_target(curves[(variant, s)], target), curves[(variant, s)][-1]["success_rate"]) for s in seeds]
        steps = [x[1] for x in per]
        mins = [x[2] / 60 for x in per if x[2] is not None]
        budget = min(curves[(variant, s)][-1]["env_steps"] for s in seeds)
        med_steps = f"{int(np.median(steps))}" if all(s is not None for s in steps) else \
            (f"> {budget} ({sum(s is None for s in steps)} of {len(steps)} not reached)")
        med_min = f"{np.median(mins):.1f}" if all(s is not None for s in steps) else "-"
        each = ", ".join(f"{s}: {st if st is not None else '-'} / {w / 60:.1f}" if w is not None else f"{s}: -"
                         for s, st, w, _ in per)
        final = ", ".join(f"{x[3]:.0%}" for x in per)
        print(f"| {variant} | {len(seeds)} | {med_steps} | {med_min} | {each} | {final} |")
    print(f"\ncurves: {out / 'learning_curves.png'}, {out / 'curves.json'}")


if __name__ == "__main__":
    sys.exit(main())
