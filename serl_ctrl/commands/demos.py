"""``serl-ctrl demos``: record scripted demonstrations of a task and report the success rate."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="reach, pickcube, push or insert")
    parser.add_argument("--backend", default="mujoco", help="mujoco or pybullet (default: mujoco)")
    parser.add_argument("--obs", default="state", help="state, pixels or both (default: state)")
    parser.add_argument("--n", type=int, default=20, help="number of episodes (default: 20)")
    parser.add_argument("--out", help="folder for the episodes (omit to only measure the success rate)")
    parser.add_argument("--reward", default="sparse", help="sparse or dense rewards in the episodes (default: sparse)")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise of the expert")
    parser.add_argument("--detour", type=float, default=0.0,
                        help="fraction of episodes that start beside the first waypoint, so the labels include "
                             "small corrections ('move a bit to the left'); for language-conditioned policies")
    parser.add_argument("--jump", type=float, default=0.0,
                        help="fraction of episodes in which the object jumps 5-7 cm away as the gripper comes down on it; "
                             "the expert recovers, so the labels include recoveries")
    parser.add_argument("--fumble", type=float, default=0.0,
                        help="fraction of episodes in which the gripper closes on nothing for two steps and the "
                             "expert recovers (labels for recoveries from a premature grasp)")
    parser.add_argument("--keep-failures", action="store_true", help="also write failed episodes")
    parser.add_argument("--image-size", type=int, default=128, help="camera image side in pixels")
    parser.add_argument("--video", help="also render the first episode to this .mp4 or .gif")


def run(args: argparse.Namespace) -> dict:
    from ..data.demos import record_demonstrations, replay_frames
    from ..data.episodes import load_episode
    from ..utils.progress import progress
    from ..utils.video import write_video

    report = record_demonstrations(
        args.task, args.out, args.n, backend=args.backend, obs=args.obs, seed=args.seed, noise=args.noise,
        keep_failures=args.keep_failures, image_size=args.image_size, reward=args.reward,
        progress=progress, detour=args.detour, jump=args.jump, fumble=args.fumble,
    )
    result = report.as_dict()
    result["out"] = args.out
    if args.video:
        if not report.written:
            raise ValueError("--video needs at least one written episode (use --out; all attempts failed?)")
        episode = load_episode(report.written[0])
        write_video(args.video, replay_frames(episode), fps=episode.metadata["control_hz"])
        result["video"] = args.video
    return result
