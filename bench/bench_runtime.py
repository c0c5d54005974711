"""Runtime latency: ``Policy.act`` with torch vs onnxruntime, 1 and 2 threads (issue 5). Prints a table.

Rows, each the real architecture with untrained weights (latency does not depend on the weights):

* SAC actor, PickCube state observations (default ``SACConfig``: 256x256 MLP);
* SAC actor, pixels: two 128x128 cameras + proprioception (default encoder config: 4 conv layers
  of 32 channels, the first strided, spatial softmax), encoders and actor in one graph;
* diffusion chunk, DDIM-10 (the shipped PickCube configuration: MLP denoiser 3x256, horizon 16,
  2 observations): the sampler unrolled in the graph, and ``--sampler runtime`` (the graph is the
  denoiser, the runtime runs DDIM in NumPy: 10 ``session.run`` calls per chunk; its torch column is
  the policy's own sampler loop, ``predict_chunk``);
* consistency chunk, 1 step (same network).

Every timed call is an ``act`` that runs an inference (the policy is reset before each call, outside
the timer; ``serl_ctrl.runtime.timing``), so it includes the observation checks, history stacking,
the whole sampler and action clipping. Configurations are interleaved over ``--rounds`` rounds after
a warm-up; p50 / p99 are over every call of every round (a block stops early after 0.4 s). Goals
(issue 5): state <= 0.05 ms, pixels <= 5 ms, consistency chunk >= 10x faster than DDIM-10.

    python bench/bench_runtime.py                    # ~1 min on 2 cores
    python bench/bench_runtime.py --rounds 2         # quicker, noisier
    python bench/bench_runtime.py --denoiser unet    # the chunk rows with Chi et al.'s temporal U-Net
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

# Before torch is imported (as serl-ctrl does): spinning OpenMP waits make 2-thread torch calls
# 10-100x slower when another process shares the 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gymnasium import spaces  # noqa: E402

from serl_ctrl.agents.consistency import ConsistencyPolicy  # noqa: E402
from serl_ctrl.agents.diffusion import DiffusionPolicy  # noqa: E402
from serl_ctrl.agents.imitation import NamedInputs, runtime_policy  # noqa: E402
from serl_ctrl.agents.imitation_run import deploy_spec  # noqa: E402
from serl_ctrl.agents.sac import SACAgent  # noqa: E402
from serl_ctrl.export.onnx_export import export_onnx  # noqa: E402
from serl_ctrl.runtime.onnx_policy import OnnxPolicy  # noqa: E402
from serl_ctrl.runtime.spec import PolicySpec  # noqa: E402
from serl_ctrl.runtime.timing import time_act  # noqa: E402
from serl_ctrl.runtime.torch_policy import TorchPolicy  # noqa: E402

THREADS = (1, 2)
BLOCK_BUDGET_S = 0.4  # per configuration and round: the whole run stays within ~1-2 min under load
PROPRIO = {"tcp_pose": 7, "tcp_vel": 6, "gripper": 1}
PICKCUBE_STATE = {**PROPRIO, "cube_pos": 3, "cube_quat": 4}
CHUNK_CONFIG = {"denoiser": "mlp", "mlp_hidden": (256, 256, 256), "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8}
ACTIONS = spaces.Box(-1.0, 1.0, (4,), np.float32)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Row:
    """One policy: its torch backend, its exported file, and calls per timed block."""

    name: str
    torch_policy: object
    onnx_path: Path
    calls: int


def sac_row(name: str, obs_space: spaces.Dict, folder: Path, calls: int) -> Row:
    agent = SACAgent(obs_space, ACTIONS, seed=0)
    module = agent.policy_state()
    spec = PolicySpec.from_spaces(obs_space, ACTIONS, algo="sac")
    path = folder / f"{name}.onnx"
    export_onnx(module, spec, path, n_random=2)
    return Row(name, TorchPolicy(module, spec), path, calls)


def chunk_rows(folder: Path, calls: int, denoiser: str) -> list[Row]:
    shapes = {k: (n,) for k, n in PICKCUBE_STATE.items()}
    dtypes = {k: "float32" for k in shapes}
    low, high = ACTIONS.low, ACTIONS.high
    config = {**CHUNK_CONFIG, "denoiser": denoiser}
    diffusion = DiffusionPolicy(DiffusionPolicy.config_class.from_dict(
        {**config, "num_inference_steps": 10, "prediction_type": "sample"}), shapes, dtypes, 4, low, high).eval()
    consistency = ConsistencyPolicy(ConsistencyPolicy.config_class.from_dict(
        {**config, "num_inference_steps": 1}), shapes, dtypes, 4, low, high).eval()
    rows = []
    unrolled, denoise = diffusion.export_modules()["deploy"], NamedInputs(diffusion.export_modules()["denoiser"])
    for name, policy, module, sampler in (
            (f"diffusion DDIM-10 ({denoiser}), sampler in the graph", diffusion, unrolled, None),
            (f"diffusion DDIM-10 ({denoiser}), sampler in the runtime", diffusion, denoise, diffusion.sampler_spec()),
            (f"consistency, 1 step ({denoiser})", consistency, consistency.export_modules()["deploy"], None)):
        spec = dataclasses.replace(deploy_spec(policy, None, {}), sampler=sampler)
        path = folder / f"chunk{len(rows)}.onnx"
        export_onnx(module, spec, path, n_random=2)
        # torch: the unrolled module for graph exports, the policy's own DDIM loop for the runtime sampler
        torch_policy = runtime_policy(policy) if sampler is not None else TorchPolicy(module, spec)
        rows.append(Row(name, torch_policy, path, calls))
    return rows


def step_obs(spec: PolicySpec, n: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    return [{k: (rng.integers(0, 256, f.shape, dtype=np.uint8) if f.dtype == "uint8"
                 else rng.normal(size=f.shape).astype(np.float32)) for k, f in spec.obs.items()} for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default: 10)")
    parser.add_argument("--denoiser", default="mlp", choices=("mlp", "unet"),
                        help="denoiser of the chunk rows (default: mlp, as the shipped policies)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    state = spaces.Dict({k: spaces.Box(-np.inf, np.inf, (n,), np.float32) for k, n in PICKCUBE_STATE.items()})
    pixels = spaces.Dict({**{k: spaces.Box(-np.inf, np.inf, (n,), np.float32) for k, n in PROPRIO.items()},
                          **{cam: spaces.Box(0, 255, (128, 128, 3), np.uint8) for cam in ("front", "wrist")}})
    log("exporting")
    rows = [sac_row("SAC actor, state", state, folder, 400), sac_row("SAC actor, pixels 2x128x128", pixels, folder, 12),
            *chunk_rows(folder, 60 if args.denoiser == "mlp" else 4, args.denoiser)]
    rows[-1].calls = rows[-2].calls * 5  # the 1-step chunk is ~10x cheaper: time it as long
    backends = {}  # (row, backend, threads) -> policy
    for row in rows:
        for n in THREADS:
            backends[(row.name, "torch", n)] = row.torch_policy
            backends[(row.name, "onnxruntime", n)] = OnnxPolicy(row.onnx_path, threads=n, verify_card=False)
    obs = {row.name: step_obs(row.torch_policy.spec, 8, np.random.default_rng(0)) for row in rows}
    times: dict[tuple, list[np.ndarray]] = {key: [] for key in backends}
    log(f"timing {len(backends)} configurations x {args.rounds} rounds")
    for r in range(-1, args.rounds):  # round -1 warms up
        for row in rows:
            for (name, backend, n), policy in backends.items():
                if name != row.name:
                    continue
                torch.set_num_threads(n)
                ms = time_act(policy, obs[name], row.calls if r >= 0 else max(row.calls // 10, 3),
                              budget_s=BLOCK_BUDGET_S)
                if r >= 0:
                    times[(name, backend, n)].append(ms)
        log(f"round {r} done")
    torch.set_num_threads(1)
    p = {k: (np.percentile(np.concatenate(v), 50), np.percentile(np.concatenate(v), 99)) for k, v in times.items()}
    cols = [(b, n) for b in ("torch", "onnxruntime") for n in THREADS]
    print(f"\nact() latency, ms, p50 / p99 (untrained networks of the real architectures; {args.rounds} interleaved "
          f"rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    print("| policy | " + " | ".join(f"{b}, {n} thread{'s' if n > 1 else ''}" for b, n in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in rows:
        print(f"| {row.name} | " + " | ".join(f"{p[(row.name, b, n)][0]:.3f} / {p[(row.name, b, n)][1]:.3f}"
                                              for b, n in cols) + " |")
    ddim, cm = rows[2].name, rows[4].name
    ratios = ", ".join(f"{b} {n}t {p[(ddim, b, n)][0] / p[(cm, b, n)][0]:.1f}x" for b, n in cols)
    print(f"\nconsistency 1-step vs DDIM-10 (graph), p50 speed-up: {ratios}")
    best = {row.name: min(p[(row.name, b, n)][0] for b, n in cols) for row in rows}
    print(f"goals (best p50): state {best[rows[0].name]:.3f} ms (<= 0.05), pixels {best[rows[1].name]:.2f} ms (<= 5), "
          f"consistency speed-up onnxruntime 1t "
          f"{p[(ddim, 'onnxruntime', 1)][0] / p[(cm, 'onnxruntime', 1)][0]:.1f}x (>= 10)")


if __name__ == "__main__":
    main()
