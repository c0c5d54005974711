"""``serl-ctrl train-planner`` and ``serl-ctrl finetune-planner``: the high-level planner of the
language hierarchy (observation history -> next instruction, by retrieval over the instruction set)."""

from __future__ import annotations

import argparse


def _overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like FIELD=VALUE")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demos", required=True, help="folder of labelled demonstrations (serl-ctrl demos --out)")
    parser.add_argument("--out", required=True, help="folder for the planner (planner.safetensors + planner.json)")
    parser.add_argument("--episodes", type=int, help="use only the first N episodes (default: all)")
    parser.add_argument("--steps", type=int, help="gradient steps (default: the config's train_steps, 2000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="planner setting, e.g. --set n_obs_steps=3 --set hidden=[256,256] (repeatable)")


def run_train(args: argparse.Namespace) -> dict:
    from ..language.planner import train_planner_run
    from ..utils.progress import progress

    _threads()
    return train_planner_run(args.demos, args.out, _overrides(args.overrides), steps=args.steps, seed=args.seed,
                             episodes=args.episodes, progress=progress)


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--planner", required=True, help="the planner to improve (a folder or NAME.json)")
    parser.add_argument("--corrections", required=True, help="corrections log (.npz) from serl-ctrl run --log")
    parser.add_argument("--out", required=True, help="folder for the fine-tuned planner (the input is kept)")
    parser.add_argument("--demos", help="original demonstrations to mix in (default: the planner's own, if present)")
    parser.add_argument("--steps", type=int, help="gradient steps (default: the config's finetune_steps, 600)")


def run_finetune(args: argparse.Namespace) -> dict:
    from ..language.planner import finetune_planner_run
    from ..utils.progress import progress

    _threads()
    return finetune_planner_run(args.planner, args.corrections, args.out, demos=args.demos, steps=args.steps,
                                seed=args.seed, progress=progress)


def _threads() -> None:
    import torch

    torch.set_num_threads(1)  # a small MLP: one thread is as fast, and fair to a simulator beside it
