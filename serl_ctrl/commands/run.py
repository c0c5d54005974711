"""``serl-ctrl run --planner``: run the language hierarchy (planner + language-conditioned policy) in
simulation, with typed, spoken, scripted or recorded corrections; optionally log the corrections
for ``serl-ctrl finetune-planner``.

"stop" (typed or spoken, anywhere in the words) halts the arm on the next control tick; words that
are not understood change nothing and are counted; text is never executed."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--planner", required=True,
                        help="planner folder from serl-ctrl train-planner / finetune-planner, or 'expert' "
                             "(the task's scripted expert names the instructions)")
    parser.add_argument("--policy", required=True,
                        help="language-conditioned low-level policy: a run folder of serl-ctrl train --language "
                             "or its policy.onnx")
    parser.add_argument("--task", default="pickcube", help="task (default: pickcube)")
    parser.add_argument("--backend", default="mujoco", help="mujoco or pybullet (default: mujoco)")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (default: 10)")
    parser.add_argument("--corrections", action="append", default=[], metavar="SOURCE",
                        help="none, scripted, spoken, typed (stdin), wav:FILE[@STEP] or text:WORDS@STEP; repeatable")
    parser.add_argument("--log", help="write the corrections log here (.npz) for serl-ctrl finetune-planner")
    parser.add_argument("--hold-steps", type=int, default=10, help="control steps a correction overrides the "
                        "planner at most (default: 10)")
    parser.add_argument("--perturb", default="none", help="none or jump (the cube jumps 5-7 cm as the gripper "
                        "starts down on it)")
    parser.add_argument("--phrasing", default="canonical", help="scripted human's words: canonical or varied")
    parser.add_argument("--real-time", action="store_true", help="pace control ticks in real time (on with typed)")


def run(args: argparse.Namespace) -> dict:
    import torch

    from ..language.session import run_session
    from ..utils.progress import progress

    torch.set_num_threads(1)
    result = run_session(args.planner, args.policy, args.task, backend=args.backend, episodes=args.episodes,
                         seed=args.seed, corrections=args.corrections, log=args.log, hold_steps=args.hold_steps,
                         perturb=args.perturb, real_time=True if args.real_time else None, phrasing=args.phrasing,
                         progress=progress)
    if not args.json:
        result.pop("events", None)
        result.pop("records", None)
    return result
