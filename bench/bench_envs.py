"""Environment throughput next to the raw physics loop of the same model.

For each backend: env steps/s for state and for pixels (front + wrist, 128 px), and the raw
physics loop at the same substeps (measured interleaved with the state env, medians of 7 rounds) (MuJoCo: ``mj_step`` per physics step from Python, and one
``mj_step(nstep=N)`` call; PyBullet: ``stepSimulation``), so the wrapper overhead is a ratio.
Goals (issue 2): MuJoCo state env >= 80% of the raw loop; pixels with two cameras >= 300 steps/s.

    python bench/bench_envs.py [--seconds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from serl_ctrl.envs import make_env


def _rate(fn, seconds: float) -> float:
    fn()  # warm up (renderer contexts, caches)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def _interleaved(fns: dict, seconds: float, rounds: int = 7) -> dict:
    """Median rate of each function over ``rounds`` interleaved slices: on a shared machine a
    ratio of two rates is only meaningful if both were measured under the same load."""
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(_rate(fn, seconds / rounds))
    return {k: float(np.median(v)) for k, v in samples.items()}


def bench_backend(backend: str, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (4096, 4)).astype(np.float32)
    results = {}
    for obs in ("state", "pixels"):
        env = make_env("pickcube", backend=backend, obs=obs)
        env.reset(seed=0)
        i = [0]

        def step():
            i[0] += 1
            *_, terminated, truncated, _ = env.step(actions[i[0] % len(actions)])
            if terminated or truncated:
                env.reset(seed=i[0])

        sim = env.unwrapped.sim
        if obs == "pixels":
            results["env_pixels"] = _rate(step, seconds)
            results["render_fps"] = _rate(lambda: sim.render("front"), seconds)
        else:
            n = env.unwrapped.substeps
            fns = {"env_state": step}
            if backend == "mujoco":
                import mujoco

                m, d = sim.model, sim.data

                def raw_loop():
                    for _ in range(n):
                        mujoco.mj_step(m, d)

                fns["raw_loop"] = raw_loop
                fns["raw_nstep"] = lambda: mujoco.mj_step(m, d, nstep=n)
            else:
                import pybullet as pb

                def raw_loop():
                    for _ in range(n):
                        pb.stepSimulation(physicsClientId=sim.cid)

                fns["raw_loop"] = raw_loop
            results.update(_interleaved(fns, 3 * seconds))
        env.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--backends", nargs="+", default=["mujoco", "pybullet"])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    rows = {b: bench_backend(b, args.seconds) for b in args.backends}
    print("| backend | env state (steps/s) | raw physics loop (steps/s) | state / raw | "
          "env pixels 2x128px (steps/s) | one 128px render (fps) |")
    print("|---|---|---|---|---|---|")
    for b, r in rows.items():
        raw = r.get("raw_nstep", r["raw_loop"])
        raw_text = f"{r['raw_loop']:.0f} (py loop)" + (f" / {r['raw_nstep']:.0f} (nstep)" if "raw_nstep" in r else "")
        ratio = f"{r['env_state'] / r['raw_loop']:.0%} of py loop" + (
            f", {r['env_state'] / raw:.0%} of nstep" if "raw_nstep" in r else "")
        print(f"| {b} | {r['env_state']:.0f} | {raw_text} | {ratio} | {r['env_pixels']:.0f} | {r['render_fps']:.0f} |")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
