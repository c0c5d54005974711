"""Consistency-AC benchmark: consistency BC vs Consistency-AC offline vs Consistency-AC offline -> online.

Push from ``--demos`` (100) scripted attempts (expert noise 0.1, dense reward; the successful ones are
kept, as in bench/bench_imitation.py, where 1-step consistency BC got ~28 % and DDIM-10 diffusion
68 %), state observations, the same actor network and recipe for all three (MLP 256x3 denoiser,
consistency training + auxiliary denoising loss, 1-step sampling):

1. **consistency BC**: ``train_policy`` (AdamW, cosine, EMA), ``--steps`` gradient steps.
2. **CAC offline**: :class:`~serl_ctrl.agents.consistency.ConsistencyAC` (BC + ``eta`` Q against a
   critic ensemble on n-step chunk returns), ``--steps`` updates on the demos.
3. **CAC offline -> online**: the agent of 2 continues for ``--online-steps`` env steps with
   ``--utd`` updates each (:class:`~serl_ctrl.agents.consistency_ac_run.OnlineFinetuner`: chunked
   execution, the sampler's noise as exploration, 50/50 demo/online batches).

Success is over ``--eval-seeds`` (50) fixed seeds 10000+ with the sampler's noise seeded per
episode (``rollout_success``), the same seeds for every row. One torch thread. Prints a markdown
table (and the online learning curve), ``--json`` also one JSON line.

    python bench/bench_consistency_ac.py                  # ~12-15 min on 2 (busy) cores
    python bench/bench_consistency_ac.py --quick          # a smoke run (~1 min), numbers meaningless

Measured before the anchor (2026-11-22, seed 0): consistency BC 16 %; CAC offline 0 % (eta 1) and
4 % (eta 0.05); offline -> online 0 %. With the anchor (``anchor_weight`` 1, TD3+BC's cloning of the
action the critic scores; 2026-11-23, load ~1-2, ~4 min a run): seed 0 BC 16 %, CAC offline 30 %,
online 28 %; seed 1 12 %, 26 %, 26 %; ``--eta 0`` (the CAC loop with the anchor, no Q term) 48 %
offline, 40 % online. The anchor makes the loop a better cloner than ``train_policy``'s
consistency BC; the Q term itself still costs ~20 points on Push from 62 expert demos, whose
critic sees expert actions only.

The conservative critic (``cql_weight``, default 1 since 2026-12-07; ``--cql 0`` is the run above)
removes that cost. Seeds 0 / 1 / 2, offline % -> online %: ``--cql 0`` 30->28, 26->26, 20->22 (mean
25.3 -> 25.3); ``--cql 1`` 40->38, 38->20, 42->30 (40.0 -> 29.3); ``--eta 0`` 48->40, 42->36, 44->20
(44.7 -> 32.0). No variant gains online in 3,000 env steps, nor in 10,000 (seed 0, ``--online-steps
10000``: ``--cql 0`` 26 -> 24, ``--cql 1`` 48 -> 46, ``--eta 0`` 44 -> 40; the offline numbers differ
from the 3,000-step runs because the consistency curriculum spans all updates of a run). Cal-QL's
floor (Q(s, a_pi) not pushed below the data's return-to-go) was tried and dropped: 40->32, 34->20,
26->18, since dense 100-step episodes end truncated and their return-to-go is no value estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from serl_ctrl.agents.consistency_ac_run import OnlineFinetuner, make_agent, split_overrides
from serl_ctrl.agents.imitation import build_imitation, rollout_success, train_policy
from serl_ctrl.agents.imitation_run import EVAL_SEED
from serl_ctrl.data.demos import record_demonstrations
from serl_ctrl.utils.progress import progress

ACTOR = {"lr": 1e-3, "batch_size": 128, "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8, "denoiser": "mlp",
         "mlp_hidden": [256, 256, 256], "mode": "ct", "dsm_weight": 1.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def demos(task: str, n: int, root: Path, noise: float) -> Path:
    out = root / f"{task}_{n}_{noise}_dense"
    if not (out.is_dir() and any(out.glob("episode_*.npz"))):
        rep = record_demonstrations(task, out, n, seed=0, noise=noise, reward="dense")
        log(f"demos {task}: {rep.successes}/{rep.attempts} expert successes kept, {rep.wall_s:.1f} s")
    return out


def success(policy, task: str, seeds: int) -> float:
    return rollout_success(policy, task, episodes=seeds, seed=EVAL_SEED, progress=progress)["success_rate"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="push")
    p.add_argument("--demos", type=int, default=100, help="expert attempts recorded (successes are kept)")
    p.add_argument("--noise", type=float, default=0.1, help="expert action noise of the demonstrations")
    p.add_argument("--steps", type=int, default=4000, help="offline gradient steps (BC) / updates (CAC)")
    p.add_argument("--online-steps", type=int, default=3000, help="env steps of online fine-tuning")
    p.add_argument("--utd", type=int, default=1)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--cql", type=float, default=1.0, help="cql_weight: the conservative critic term (default 1)")
    p.add_argument("--eval-seeds", type=int, default=50)
    p.add_argument("--online-eval-every", type=int, default=1000)
    p.add_argument("--online-eval-episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, not the method")
    p.add_argument("--out", default="runs/bench_consistency_ac", help="demonstrations are cached here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.online_steps, args.eval_seeds, args.online_eval_every = 100, 200, 3, 100
        args.online_eval_episodes = 2
    torch.set_num_threads(1)
    root = Path(args.out)
    folder = demos(args.task, args.demos, root, args.noise)
    cfg, actor_cfg = split_overrides({**ACTOR, "eta": args.eta, "cql_weight": args.cql, "utd": args.utd,
                                      "online_steps": args.online_steps, "eval_every": args.online_eval_every})
    rows = []

    t = time.perf_counter()
    bc, dataset = build_imitation("consistency", folder, actor_cfg, seed=args.seed)
    train_policy(bc, dataset, args.steps, seed=args.seed, progress=progress)
    wall = time.perf_counter() - t
    rows.append(("consistency BC", args.steps, 0, success(bc, args.task, args.eval_seeds), wall))
    log(f"consistency BC: {rows[-1][3]:.0%} ({wall:.0f} s train)")

    t = time.perf_counter()
    actor, dataset = build_imitation("consistency", folder, actor_cfg, seed=args.seed)
    agent = make_agent(actor, cfg, args.seed)
    total = args.steps + cfg.online_steps * cfg.utd
    offline = agent.train(dataset, args.steps, total_steps=total, progress=progress)
    wall_off = time.perf_counter() - t
    rows.append(("CAC offline", args.steps, 0, success(actor, args.task, args.eval_seeds), wall_off))
    log(f"CAC offline: {rows[-1][3]:.0%} ({wall_off:.0f} s train, critic loss {offline['critic_loss']:.3f})")

    t = time.perf_counter()
    tuner = OnlineFinetuner(agent, dataset, cfg, args.task, seed=args.seed, eval_episodes=args.online_eval_episodes,
                            total_updates=total, progress=progress)
    online = tuner.run()
    wall_on = time.perf_counter() - t
    rows.append(("CAC offline -> online", args.steps, args.online_steps, success(actor, args.task, args.eval_seeds),
                 wall_off + wall_on))
    log(f"CAC online: {rows[-1][3]:.0%} ({wall_on:.0f} s online, {online['online_episodes']} episodes)")

    print(f"\n### Consistency-AC on {args.task}: {dataset.n_episodes} demos (of {args.demos} expert attempts, "
          f"dense reward), 1-step sampling, {args.eval_seeds} seeds {EVAL_SEED}+\n")
    print("| method | offline updates | online env steps (utd) | success | train wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, steps, env_steps, rate, w in rows:
        on = f"{env_steps} ({cfg.utd})" if env_steps else "0"
        print(f"| {name} | {steps} | {on} | {rate:.0%} | {w:.0f} |")
    print(f"\nOnline learning curve ({args.online_eval_episodes} seeds per point, eta {cfg.eta:g}, "
          f"demo fraction {cfg.demo_fraction:g}):\n")
    print("| env steps | updates | online episodes | success | critic loss | Q |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in tuner.rows:
        print(f"| {r['env_steps']} | {r['updates']} | {r['online_episodes']} | {r['success_rate']:.0%} | "
              f"{r.get('critic_loss', float('nan')):.3f} | {r.get('q', float('nan')):.2f} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} (timings depend on it)")
    if args.json:
        print(json.dumps({"rows": [dict(zip(("method", "offline_updates", "online_env_steps", "success_rate",
                                             "wall_s"), r)) for r in rows], "curve": tuner.rows}))


if __name__ == "__main__":
    main()
