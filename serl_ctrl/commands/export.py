"""``serl-ctrl export``: a trained run or checkpoint -> one self-describing .onnx file + model card.

Every policy class: SAC (the deterministic actor, image encoders included), diffusion (DDIM
unrolled in the graph, or ``--sampler runtime``: the denoiser alone, sampled by the runtime),
consistency (``--steps`` 1 or k), Gaussian BC. Diffusion and consistency unroll their sampler with
zero noise by default; ``--sampler graph-noise`` keeps the noise as graph inputs so the runtime can
feed fresh seeded noise per chunk (``OnnxPolicy(..., sampler_seed=S)``, ``serl-ctrl eval
--sampler-seed``, the policy node's ``sampler_seed``), which multimodal demonstrations need (see
``serl_ctrl.export.sources``). A policy with an ``instruction_embedding`` observation takes the
instruction as one more input. The work lives in ``serl_ctrl.export``.
"""

from __future__ import annotations

import argparse
import shlex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                        help="a training run folder (SAC or imitation), a SAC checkpoint (folder or "
                             "ckpt_<step>.json) or an imitation policy (model.json / model.safetensors)")
    parser.add_argument("-o", "--out", required=True, metavar="PATH.onnx", help="the policy file to write")
    parser.add_argument("--check", action="store_true",
                        help="also run onnx.checker on the file and re-check torch vs onnxruntime parity on fresh "
                             "random and recorded observations, for the graph and for the runtime policy "
                             "(exit 2 above --atol)")
    parser.add_argument("--atol", type=float, default=1e-5,
                        help="parity bound: max abs diff, relative for outputs above 1 (default: 1e-5)")
    parser.add_argument("--sampler", choices=("graph", "graph-noise", "runtime"),
                        help="diffusion and consistency: 'graph' unrolls the sampler in the graph with zero noise "
                             "(default); 'graph-noise' unrolls it but takes its noise as graph inputs, fed by the "
                             "runtime (zeros, or fresh noise per chunk with a sampler seed); diffusion only: "
                             "'runtime' exports the denoiser and the runtime runs DDIM in NumPy")
    parser.add_argument("--steps", type=int, help="sampler steps: DDIM steps (diffusion), 1..k (consistency); "
                                                  "default: the policy's own")
    parser.add_argument("--episodes", help="folder of recorded episodes for the parity check "
                                           "(default: the run's demonstrations, when they are still there)")
    parser.add_argument("--evaluate", type=int, default=0, metavar="N",
                        help="evaluate the exported file over N episodes in simulation for the card's success rate")
    parser.add_argument("--task", help="task, when the run records none (or to evaluate on another)")
    parser.add_argument("--obs", help="SAC checkpoints without a run config: state, pixels or both")
    parser.add_argument("--backend", default="mujoco", help="simulator for --evaluate (default: mujoco)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while exporting (default: 1)")


def command_line(args: argparse.Namespace) -> str:
    """The command as the user could type it again (for the card and the file's metadata)."""
    parts = ["serl-ctrl", "export", args.source, "-o", args.out]
    for flag in ("sampler", "steps", "episodes", "task", "obs"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag}", str(value)]
    if args.evaluate:
        parts += ["--evaluate", str(args.evaluate), "--backend", args.backend]
    if args.check:
        parts.append("--check")
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> dict:
    import torch

    from ..export.pipeline import export_policy
    from ..export.sources import load_exportable
    from ..utils.progress import progress

    if not args.out.endswith(".onnx"):
        raise ValueError(f"--out must end in .onnx, got {args.out}")
    if args.evaluate < 0:
        raise ValueError(f"--evaluate must be >= 0, got {args.evaluate}")
    torch.set_num_threads(args.threads)
    command = command_line(args)
    src = load_exportable(args.source, sampler=args.sampler, steps=args.steps, episodes=args.episodes,
                          task=args.task, obs=args.obs, command=command)
    return export_policy(src, args.out, check=args.check, evaluate=args.evaluate, backend=args.backend,
                         atol=args.atol, command=command, progress=progress)
