"""``serl-ctrl train``: train a policy (SAC with RLPD choices; imitation algorithms; Consistency-AC
from demonstrations, offline then optionally online)."""

from __future__ import annotations

import argparse
import shlex
import sys

ALGOS = ("sac", "diffusion", "consistency", "consistency-ac", "bc")
IMITATION = ("diffusion", "consistency", "bc")
FROM_DEMOS = (*IMITATION, "consistency-ac")  # algorithms that start from --demos (the _run_imitation path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", default="sac", help=f"learning algorithm: {', '.join(ALGOS)} (default: sac)")
    parser.add_argument("--task", help="serl_ctrl task: reach, pickcube, push, insert (default: pickcube)")
    parser.add_argument("--env", dest="env_id", help="a gymnasium environment id instead of --task")
    parser.add_argument("--backend", help="mujoco or pybullet (default: mujoco)")
    parser.add_argument("--obs", help="sac: state, pixels or both (default: state); the other algos use what "
                                      "their --demos hold")
    parser.add_argument("--reward", help="sparse or dense (default: sparse; demos must be recorded alike)")
    parser.add_argument("--demos", help="folder of demonstration episodes (serl-ctrl demos --out)")
    parser.add_argument("--steps", type=int, help="env steps (default: 20000); diffusion, consistency, bc, "
                        "consistency-ac: gradient steps on the demos (online env steps: --set online_steps=N)")
    parser.add_argument("--out", required=True, help="run folder (config, checkpoints, logs, policy.onnx)")
    parser.add_argument("--config", help="YAML file of run fields, with the agent's under 'sac:'")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an agent setting, e.g. --set sac.utd=8, or --set horizon=16 for "
                             "imitation algorithms, --set eta=2 --set online_steps=5000 for consistency-ac "
                             "(repeatable)")
    parser.add_argument("--eval-every", type=int, help="env steps between evaluations (default: 2000; "
                        "consistency-ac: online env steps, default 1000)")
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default: 20)")
    parser.add_argument("--checkpoint-every", type=int, help="env steps between checkpoints (default: 5000; "
                        "diffusion, consistency, bc: gradient steps; consistency-ac: offline updates, then "
                        "online env steps; 0 = none)")
    parser.add_argument("--intervention", help="'expert': a scripted human takes over when the arm strays")
    parser.add_argument("--reward-classifier", metavar="PATH",
                        help="train on a learned reward: a classifier from serl-ctrl reward-classifier --out "
                             "(1 and episode end on predicted success; evaluation uses the task's success)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1: two OpenMP threads next to a simulator were 9x slower here)")
    parser.add_argument("--device", help="auto (default: a CUDA GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--stop-at", type=float, metavar="RATE",
                        help="end the run at the first evaluation whose success rate reaches RATE (e.g. 0.9)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-export", action="store_true", help="skip writing policy.onnx at the end")
    parser.add_argument("--language", action="store_true",
                        help="diffusion/consistency/bc: condition the policy on the demos' per-step instruction "
                             "labels (observation instruction_embedding, MiniLM) for serl-ctrl run --planner")


def run(args: argparse.Namespace) -> dict:
    if args.algo not in ALGOS:
        raise ValueError(f"unknown --algo {args.algo!r}; valid: {', '.join(ALGOS)}")
    from ..utils.progress import progress

    command = "serl-ctrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.algo in FROM_DEMOS:
        return _run_imitation(args, progress, command)
    if args.language:
        raise ValueError("--language applies to the imitation algorithms (diffusion, consistency, bc), not sac")
    from ..agents.train_sac import RunConfig, train_sac

    values = {"task": args.task, "env_id": args.env_id, "backend": args.backend, "obs": args.obs, "reward": args.reward,
              "demos": args.demos, "steps": args.steps, "seed": args.seed, "eval_every": args.eval_every,
              "eval_episodes": args.eval_episodes, "checkpoint_every": args.checkpoint_every,
              "intervention": args.intervention, "threads": args.threads, "device": args.device,
              "reward_classifier": args.reward_classifier}
    cfg = RunConfig.load(args.config, values, args.overrides)
    if args.stop_at is not None and not 0.0 < args.stop_at <= 1.0:
        raise ValueError(f"--stop-at must be in (0, 1], got {args.stop_at}")
    return train_sac(cfg, args.out, resume=args.resume, progress=progress, command=command,
                     export=not args.no_export, stop_at=args.stop_at)


def _run_imitation(args: argparse.Namespace, progress, command: str) -> dict:
    import yaml

    if not args.demos:
        raise ValueError(f"--algo {args.algo} learns from demonstrations: pass --demos DIR")
    if args.env_id or args.obs or args.intervention or args.reward_classifier or args.stop_at is not None:
        # --obs included: an imitation policy sees what its demos hold (serl-ctrl demos --obs pixels)
        raise ValueError(f"--env, --obs, --intervention, --reward-classifier and --stop-at apply to --algo sac "
                         f"only, not {args.algo} (it uses the observations its --demos hold)")
    checkpoint_every = 5000 if args.checkpoint_every is None else args.checkpoint_every
    overrides = {}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like FIELD=VALUE")
        overrides[key.strip()] = yaml.safe_load(raw)
    if args.algo == "consistency-ac":
        if args.language:
            raise ValueError("--language applies to diffusion, consistency and bc, not consistency-ac")
        import torch

        from ..agents.consistency_ac_run import run_consistency_ac

        torch.set_num_threads(args.threads or 1)  # as SAC: the simulator shares the cores
        return run_consistency_ac(args.demos, args.out, task=args.task, backend=args.backend or "mujoco",
                                  steps=args.steps, seed=args.seed, overrides=overrides,
                                  eval_episodes=args.eval_episodes or 20, eval_every=args.eval_every,
                                  progress=progress, command=command, export=not args.no_export,
                                  device=args.device or "auto", checkpoint_every=checkpoint_every,
                                  resume=args.resume)
    from ..agents.imitation_run import run_imitation

    return run_imitation(args.algo, args.demos, args.out, task=args.task, backend=args.backend or "mujoco",
                         steps=args.steps, seed=args.seed, overrides=overrides,
                         eval_episodes=args.eval_episodes or 20, progress=progress, command=command,
                         export=not args.no_export, language=args.language, device=args.device or "auto",
                         checkpoint_every=checkpoint_every, resume=args.resume)
