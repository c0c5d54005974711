"""``serl-ctrl reward-classifier``: train a success classifier on recorded episodes (a learned reward).

The work lives in :mod:`serl_ctrl.agents.reward_classifier`; ``serl-ctrl train --reward-classifier
OUT`` then uses it as the environment's reward.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", action="append", required=True, metavar="DIR",
                        help="folder of episodes (serl-ctrl demos --out; record failures too with "
                             "--keep-failures --noise); repeatable")
    parser.add_argument("--out", required=True, help="folder for model.safetensors + classifier.json")
    parser.add_argument("--keys", help="observation keys the classifier sees, comma-separated (e.g. "
                                       "front,wrist; default: every camera, else every state key)")
    parser.add_argument("--steps", type=int, help="gradient steps (default: 1000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a setting, e.g. --set lr=1e-3, --set encoder.channels=16, "
                             "--set val_fraction=0.3 (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")


def run(args: argparse.Namespace) -> dict:
    import torch

    from ..agents.reward_classifier import RewardClassifierConfig, train_reward_classifier
    from ..utils.progress import progress

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    base = {"seed": args.seed}
    if args.keys is not None:
        base["keys"] = args.keys
    if args.steps is not None:
        base["steps"] = args.steps
    cfg = RewardClassifierConfig.from_overrides(args.overrides, base=RewardClassifierConfig.from_dict(base))
    torch.set_num_threads(args.threads)
    return train_reward_classifier(cfg, args.episodes, args.out, progress=progress)
