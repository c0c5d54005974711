"""SAC learner throughput: gradient steps per second on this machine.

One "SAC step" is one critic update + one actor update + one temperature update (``utd=1``),
the same unit as one Stable-Baselines3 SAC gradient step. Rows vary:

* ensemble: ``batched`` (stacked weights, one baddbmm per layer: what SACAgent uses) vs
  ``looped`` (one MLP per critic in a Python loop, same math),
* dtype: ``float32`` vs ``bf16-autocast``,
* ``torch.compile`` of the loss functions on/off,
* 1 and 2 torch threads,

for the RLPD state config (10 critics, 256x256, batch 256, Pendulum-sized obs/actions), then
Stable-Baselines3 SAC (its default 2 critics, and 10) when it is installed, then pixel rows
(two 128x128x3 cameras, DrQ encoder, batch 64; 1 or 3 stride-2 conv layers).

Columns: ``steps/s`` (wall clock, best of 3 windows) and ``steps/cpu-s`` (steps per CPU second
of this process: robust to other processes on a shared machine; with 2 threads it counts both
threads' CPU time, so compare it only between rows with the same thread count).

Measured on the 2-core dev machine (Xeon with AMX, torch 2.13 CPU, shared with other jobs, load
~5; steps per CPU-second, 1 thread): batched fp32 20, looped fp32 25, batched bf16 24, compiled
fp32 27, compiled bf16 54 (2.7x), SB3 10 critics 23, SB3 2 critics 78. Eager, the looped
ensemble is faster here: the per-member LayerNorm affine of the batched form is an extra pass over
(10, 256, 256) activations that no longer fit in L2; ``torch.compile`` fuses it away. Pixels
(2x128 px, batch 64): 0.6 (DrQ, 1 stride-2 layer) to 3.4 (3 stride-2 layers, bf16) steps/cpu-s.

On a shared machine run it with ``OMP_WAIT_POLICY=PASSIVE``: with the default (spinning) policy,
2 OpenMP threads competing with other processes for 2 cores ran ~10x slower than 1 thread here.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_sac_updates.py [--seconds 4] [--threads 1,2]
                                      [--sections state,compile,sb3,pixels] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

from serl_ctrl.agents.config import SACConfig
from serl_ctrl.agents.sac import SACAgent, _adam
from serl_ctrl.nn.mlp import LoopedEnsembleMLP


def _spaces_state():
    import gymnasium as gym

    return (gym.spaces.Box(-8.0, 8.0, (3,), np.float32), gym.spaces.Box(-2.0, 2.0, (1,),
                                                                        np.float32))


def _spaces_pixels(size=128):
    import gymnasium as gym

    cam = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
    obs = gym.spaces.Dict({"front": cam, "wrist": cam,
                           "tcp_pose": gym.spaces.Box(-np.inf, np.inf, (7,), np.float32)})
    return obs, gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


def _random_batch(obs_space, act_space, n, rng):
    def sample_obs():
        if hasattr(obs_space, "spaces"):
            return {k: _sample_box(s, n, rng) for k, s in obs_space.spaces.items()}
        return _sample_box(obs_space, n, rng)

    return {"obs": sample_obs(), "next_obs": sample_obs(),
            "actions": rng.uniform(act_space.low, act_space.high,
                                   (n, *act_space.shape)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminated": rng.random(n) < 0.01}


def _sample_box(s, n, rng):
    if s.dtype == np.uint8:
        return rng.integers(0, 256, (n, *s.shape), dtype=np.uint8)
    return rng.normal(size=(n, *s.shape)).astype(np.float32)


def make_looped(agent: SACAgent) -> None:
    """Swap the agent's batched critic ensembles for per-critic Python loops (same weights)."""
    agent.critic.net = LoopedEnsembleMLP.from_ensemble(agent.critic.net)
    agent.target_critic.net = LoopedEnsembleMLP.from_ensemble(
        agent.target_critic.net).requires_grad_(False)
    agent.critic_opt = _adam(list(agent.critic.parameters()) + list(agent.encoder.parameters()),
                             agent.config.critic_lr)
    agent._online_params = list(agent.critic.parameters()) + list(agent.encoder.parameters())
    agent._target_params = (list(agent.target_critic.parameters())
                            + list(agent.target_encoder.parameters()))


def _rate(step, seconds, warmup):
    """(steps per wall second, steps per CPU second of this process), best of 3 windows."""
    for _ in range(warmup):
        step()
    best_wall = best_cpu = 0.0
    for _ in range(3):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            step()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds / 3:
                break
        best_wall = max(best_wall, n / dt)
        best_cpu = max(best_cpu, n / max(time.process_time() - c0, 1e-9))
    return best_wall, best_cpu


def bench_agent(cfg: SACConfig, spaces, *, looped=False, seconds=4.0, warmup=3, device="cpu"):
    obs_space, act_space = spaces
    agent = SACAgent(obs_space, act_space, cfg, seed=0, device=device)
    if looped:
        make_looped(agent)
    rng = np.random.default_rng(0)
    batches = [_random_batch(obs_space, act_space, cfg.batch_size * cfg.utd, rng)
               for _ in range(4)]
    i = [0]

    def step():
        i[0] += 1
        agent.update(batches[i[0] % 4])
        if agent.device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()  # first call: compile time lands here
    first = time.perf_counter() - t0
    wall, cpu = _rate(step, seconds, warmup)
    return wall * cfg.utd, cpu * cfg.utd, first


def bench_sb3(n_critics: int, seconds: float, batch=256):
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.logger import configure
    except ImportError:
        return None
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    model = SAC("MlpPolicy", env, batch_size=batch, learning_starts=0, buffer_size=10_000,
                policy_kwargs=dict(net_arch=[256, 256], n_critics=n_critics), device="cpu",
                seed=0, verbose=0)
    model.set_logger(configure(folder=None, format_strings=[]))
    rng = np.random.default_rng(0)
    for _ in range(2000):
        o = rng.normal(size=(1, 3)).astype(np.float32)
        model.replay_buffer.add(o, o, rng.uniform(-2, 2, (1, 1)).astype(np.float32),
                                np.array([rng.normal()]), np.array([False]), [{}])

    def step():
        model.train(gradient_steps=10, batch_size=batch)

    wall, cpu = _rate(step, seconds, 1)
    return wall * 10, cpu * 10


def bench_default(threads, seconds: float, device: str) -> None:
    """Benchmark 4 of issue #3: the learner's updates/s with the DEFAULT config (10 critics,
    256x256, batch 256, UTD 4: four critic updates then one actor + temperature update per env
    step, compiled) next to SB3 SAC's gradient steps/s (2 critics, one critic + actor update
    each). Rows alternate over 3 rounds and the median is kept: a shared VM drifts by +-15%."""
    from serl_ctrl.agents.sac import resolve_dtype

    default_dtype = resolve_dtype(SACConfig().dtype, torch.device(device))
    print(f"== default SACConfig (UTD {SACConfig().utd}, compile={SACConfig().compile}, dtype="
          f"{SACConfig().dtype} = {default_dtype} here) on {device}: critic updates/s; SB3: gradient "
          f"steps/s (median of 3 alternating rounds)", flush=True)
    results: dict = {}
    for th in threads:
        torch.set_num_threads(th)
        for rnd in range(3):
            for dtype in ("float32", "bf16-autocast"):
                rate, _, first = bench_agent(SACConfig().replace(dtype=dtype), _spaces_state(),
                                             seconds=seconds, device=device)
                results.setdefault((f"serl_ctrl default, {dtype}", th), []).append(rate)
            if device == "cpu":
                res = bench_sb3(2, seconds)
                if res is not None:
                    results.setdefault(("SB3 SAC defaults (2 critics)", th), []).append(res[0])
    print(f"{'row':<40}{'threads':>8}{'median/s':>10}{'rounds':>26}")
    best: dict = {}
    for (name, th), rates in results.items():
        med = float(np.median(rates))
        best[name] = max(best.get(name, 0.0), med)
        print(f"{name:<40}{th:>8}{med:>10.1f}{'  ' + ' / '.join(f'{r:.0f}' for r in rates):>26}")
    sb3 = best.get("SB3 SAC defaults (2 critics)")
    if sb3:
        for dtype in ("float32", "bf16-autocast"):
            ours = best[f"serl_ctrl default, {dtype}"]
            tag = ", the default here" if dtype == default_dtype else ""
            print(f"ratio ours ({dtype}{tag}) / SB3, best thread count each: {ours / sb3:.2f}x "
                  f"(goal >= 1.0x)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="timing window per row")
    ap.add_argument("--threads", default="1,2", help="torch thread counts, e.g. 1,2")
    ap.add_argument("--sections", default="default,state,compile,sb3,pixels",
                    help="comma list of: default (the default SACConfig, UTD 4, in critic "
                         "updates/s, next to SB3), state (batched/looped x fp32/bf16, UTD 1), "
                         "compile, sb3, pixels")
    ap.add_argument("--device", default="cpu", help="torch device of our agent (cuda: only the "
                    "'default' and 'pixels' sections run; SB3 stays on the CPU)")
    ap.add_argument("--quick", action="store_true", help="= --threads 1 --sections state")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    threads = [int(t) for t in args.threads.split(",")]
    sections = set(args.sections.split(","))
    if args.quick:
        threads, sections = [1], {"state"}
    if args.device != "cpu":
        sections &= {"default", "pixels"}
    if "default" in sections:
        bench_default(threads, args.seconds, args.device)
        sections.discard("default")
        if not sections:
            return 0
    base = SACConfig.from_dict(dict(hidden_dims=(256, 256), n_critics=10, critic_subsample=2,
                                    batch_size=256, utd=1))
    rows = []
    load = ", load avg %.1f (other processes skew the numbers)" % os.getloadavg()[0] \
        if hasattr(os, "getloadavg") else ""
    load += f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs{load}; RLPD state config: 10 "
          f"critics 256x256, batch 256, obs 3, act 1; unit: SAC gradient steps/s (utd=1)",
          flush=True)
    header = f"{'impl':<22}{'ensemble':<10}{'dtype':<15}{'compile':<9}{'threads':>8}" \
             f"{'steps/s':>9}{'steps/cpu-s':>13}{'first (s)':>11}"
    print(header)
    print("-" * len(header), flush=True)

    def emit(impl, ens, dtype, comp, th, rate, cpu_rate, first=None):
        rows.append(dict(impl=impl, ensemble=ens, dtype=dtype, compile=comp, threads=th,
                         steps_per_s=round(rate, 2), steps_per_cpu_s=round(cpu_rate, 2),
                         first_s=first))
        f = f"{first:>11.1f}" if first is not None else f"{'':>11}"
        print(f"{impl:<22}{ens:<10}{dtype:<15}{str(comp):<9}{th:>8}{rate:>9.1f}"
              f"{cpu_rate:>13.1f}{f}", flush=True)

    for th in threads:
        torch.set_num_threads(th)
        for dtype in ("float32", "bf16-autocast"):
            if "state" in sections:
                for looped in (False, True):
                    rate, cpu, first = bench_agent(base.replace(dtype=dtype), _spaces_state(),
                                                   looped=looped, seconds=args.seconds)
                    emit("serl_ctrl SACAgent", "looped" if looped else "batched", dtype, False,
                         th, rate, cpu, first)
            if "compile" in sections:
                try:
                    rate, cpu, first = bench_agent(base.replace(dtype=dtype, compile=True),
                                                   _spaces_state(), seconds=args.seconds)
                    emit("serl_ctrl SACAgent", "batched", dtype, True, th, rate, cpu, first)
                except Exception as e:  # pragma: no cover - compile unavailable
                    print(f"compile failed: {type(e).__name__}: {e}", file=sys.stderr)
        if "sb3" in sections:
            for n in (2, 10):
                res = bench_sb3(n, args.seconds)
                if res is None:
                    print("stable-baselines3 not installed: skipped")
                    break
                emit(f"SB3 SAC ({n} critics)", "looped", "float32", False, th, *res)
    if "pixels" in sections:
        th = max(threads)
        torch.set_num_threads(th)
        print("pixels: 2 cameras 128x128x3 + 7-d state, act 4, batch 64, DrQ encoder (32 ch, "
              "4 layers, spatial softmax); 'sN' = N leading stride-2 layers", flush=True)
        for strided in (1, 3):
            for dtype in ("float32", "bf16-autocast"):
                cfg = base.replace(dtype=dtype, batch_size=64,
                                   encoder=base.encoder.__class__(strided_layers=strided))
                rate, cpu, first = bench_agent(cfg, _spaces_pixels(), seconds=args.seconds,
                                               warmup=1, device=args.device)
                emit(f"pixels b64 s{strided}", "batched", dtype, False, th, rate, cpu, first)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
