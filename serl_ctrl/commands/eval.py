"""``serl-ctrl eval``: success rate and latency of an exported policy in simulation."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True,
                        help="a .onnx file, a training run folder (its policy.onnx) or a shipped policy's name")
    parser.add_argument("--task", help="task to evaluate on (default: the policy's own task)")
    parser.add_argument("--env", dest="env_id", help="a gymnasium environment id instead of --task")
    parser.add_argument("--backend", default="mujoco", help="mujoco or pybullet (default: mujoco)")
    parser.add_argument("--episodes", type=int, default=20, help="number of episodes (default: 20)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: 1)")
    parser.add_argument("--adaptive-tau", type=float, help="adaptive chunking threshold for chunked policies")
    parser.add_argument("--sampler-seed", type=int, help="files exported with --sampler runtime or graph-noise: "
                        "fresh sampler noise per chunk from this seed (default: zeros, as the robot by default)")
    parser.add_argument("--video", help="write the first episode to this .mp4 or .gif")


def resolve_policy_path(name: str) -> str:
    """A run folder means its exported policy; anything else is a file or a shipped name."""
    path = Path(name)
    if path.is_dir():
        onnx = path / "policy.onnx"
        if not onnx.is_file():
            raise FileNotFoundError(f"{path} is a folder without policy.onnx (train or `serl-ctrl export` it first)")
        return str(onnx)
    return name


def run(args: argparse.Namespace) -> dict:
    from ..runtime import load_policy
    from ..runtime.evaluate import evaluate, make_eval_env
    from ..utils.progress import progress

    policy = load_policy(resolve_policy_path(args.policy), threads=args.threads, adaptive_tau=args.adaptive_tau,
                         sampler_seed=args.sampler_seed)
    env = make_eval_env(policy, args.task, args.env_id, args.backend, render=bool(args.video))
    frames: list = []
    try:
        result = evaluate(policy, env, args.episodes, seed=args.seed, progress=progress,
                          on_frame=frames.append if args.video else None)
    finally:
        env.close()
    result.update(policy=str(getattr(policy, "path", args.policy)), task=args.task or policy.spec.task,
                  backend=args.backend if not args.env_id else None, env=args.env_id)
    if args.video:
        from ..utils.video import write_video

        write_video(args.video, frames, fps=policy.spec.control_hz)
        result["video"] = args.video
    return result
