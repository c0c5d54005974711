"""``serl-ctrl video``: render a recorded episode to .mp4 or .gif.

Episodes with camera images are tiled as recorded; state-only episodes are re-simulated from
their seed and actions and rendered from the front camera.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episode", help="an episode file (.npz) written by `serl-ctrl demos` or training")
    parser.add_argument("-o", "--output", required=True, help="output video, .mp4 or .gif")
    parser.add_argument("--replay", action="store_true",
                        help="re-simulate even if the episode holds images (renders at --size)")
    parser.add_argument("--size", type=int, default=256, help="render size for replays (default: 256)")
    parser.add_argument("--fps", type=float, help="frames per second (default: the episode's control rate)")


def run(args: argparse.Namespace) -> dict:
    from ..data.demos import replay_frames
    from ..data.episodes import load_episode
    from ..utils.video import episode_frames, write_video

    episode = load_episode(args.episode)
    fps = args.fps or episode.metadata.get("control_hz", 10)
    divergence: list[float] = []
    if episode.image_keys and not args.replay:
        frames, mode = episode_frames(episode), "recorded images"
    else:
        frames, mode = replay_frames(episode, size=args.size, divergence=divergence), "replay"
    path = write_video(args.output, frames, fps=fps)
    result = {"video": str(path), "frames": episode.length + 1, "fps": fps, "source": mode}
    if divergence:
        result["replay_max_tcp_error_m"] = divergence[0]
    return result
