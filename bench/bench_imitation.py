"""Imitation benchmarks: diffusion vs consistency vs Gaussian BC (issue 4). Prints four tables.

1. **Success** over ``--eval-seeds`` (50) seeds on PickCube and Push from ``--demos`` (100) scripted
   demonstrations (expert noise 0.1), for ``--obs state`` and/or ``pixels`` (front + wrist 128 px and
   proprioception, no object state): diffusion (x_0 prediction, Min-SNR-5; sampled with DDPM-100 and
   DDIM-10; on state also Chi et al.'s epsilon prediction with DDIM-10), consistency (consistency
   training + auxiliary denoising loss, weight 1 on state and 10 on pixels, 1 and 3 steps;
   ``--distill`` adds a consistency policy distilled from the x_0 diffusion one, which starts as a
   copy of it and regresses its 10-step ODE solutions), Gaussian BC (MSE). Every sampler
   that draws noise is evaluated twice: fresh noise per chunk, and zero noise, which is what
   ``serl-ctrl export`` deploys. Goal: consistency 1-step within 5 points of DDIM-10.
2. **Latency** per action chunk (``predict_action``, batch 1) for the same network, 1 and 2 torch
   threads: DDIM-10 vs consistency 1/3 steps, MLP and U-Net denoisers. Goal: 1-step >= 10x faster.
3. **SGAC under perturbation** (PickCube; the cube jumps 5-7 cm sideways when the open gripper is
   about to grasp it): success with and without self-guidance and adaptive chunking, for policies
   trained on plain demonstrations and on demonstrations in which the cube jumps in half the
   episodes (``--sgac-jump``) and the expert recovers; executing one action per chunk (closed loop)
   is the baseline for reactivity.
4. **Multimodality** (Avoid: the expert passes the pillar left or right by a coin flip): success,
   collisions and which side was taken; consistency with and without the denoising term (and
   distilled, with ``--distill``), at 1, 2 and 3 steps; noise-drawing samplers with fresh and with zero
   noise (the deployed default).

    python bench/bench_imitation.py --only success        # table 1, state: ~31 min (one core busy)
    python bench/bench_imitation.py --only success --obs pixels --no-epsilon   # pixels: ~38 min per task
    python bench/bench_imitation.py --only success --obs pixels --no-epsilon --device cuda --seed 2 \
        --pixel-steps-diffusion 6000 --pixel-steps-consistency 6000   # on a GPU (README: ~5 min per policy)
    python bench/bench_imitation.py --only latency sgac modes
    python bench/bench_imitation.py --quick               # a smoke run (~3 min), numbers meaningless

Evaluation seeds start at 1000 (demonstrations use 0..N-1). With 50 seeds a success rate near 70 %
has a binomial standard error of ~6.5 points. ``--json`` prints every result as one JSON line at the
end. Timings depend on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from serl_ctrl.agents.bc import BCPolicy
from serl_ctrl.agents.consistency import ConsistencyPolicy
from serl_ctrl.agents.diffusion import DiffusionPolicy
from serl_ctrl.agents.imitation import ChunkDataset, rollout_success, train_policy
from serl_ctrl.data.demos import record_demonstrations
from serl_ctrl.data.episodes import load_episodes
from serl_ctrl.envs.perturb import ObjectJump
from serl_ctrl.utils.progress import progress


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


# The shipped pixel policy's settings (policies/pickcube_bc_pixels.json): one frame of each camera,
# a 3-layer strided conv encoder per camera, batch 64 (each step encodes 2 x 64 images on the CPU).
PIXEL_SETTINGS = {"batch_size": 64, "n_obs_steps": 1, "encoder": {"strided_layers": 3}}
# Consistency training's auxiliary denoising weight when --ct-dsm is not given. From pixels the
# consistency loss alone trains the image encoders poorly (its targets come from the network itself):
# on Push pixels, DSM 10 took 1-step success from 42% to 58% over five seeds (README); on state
# DSM 1 is the measured setting of table 1.
CT_DSM = {"state": 1.0, "pixels": 10.0}


def configs(args, obs: str = "state") -> dict[str, dict]:
    common = {"lr": 1e-3, "batch_size": 128, "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8}
    if obs == "pixels":
        common.update(PIXEL_SETTINGS)
    net = {"denoiser": args.denoiser, "mlp_hidden": tuple(args.mlp_hidden), "down_dims": (64, 128, 256)}
    return {
        "diffusion": {**common, **net, "num_inference_steps": 10, "prediction_type": "epsilon"},  # Chi et al., Min-SNR-5
        "diffusion_x0": {**common, **net, "num_inference_steps": 10, "prediction_type": "sample"},
        "consistency": {**common, **net, "mode": "ct",
                        "dsm_weight": CT_DSM[obs] if args.ct_dsm is None else args.ct_dsm,
                        **({"p_mean": args.ct_p_mean} if getattr(args, "ct_p_mean", None) is not None else {})},
        "bc": {**common, "hidden_dims": (256, 256, 256), "loss": "mse"},
    }


def cd_config(cfgs: dict) -> dict:
    """Consistency distillation: the consistency config without the denoising term (the student
    regresses the teacher's ODE solutions, ``ConsistencyConfig``'s cd defaults)."""
    return {**cfgs["consistency"], "mode": "cd", "dsm_weight": 0.0}


def ct_name(args, dsm: float) -> str:
    """Row label of a consistency-trained policy: its auxiliary DSM weight and noise-level centre."""
    parts = [f"DSM {dsm:g}"] if dsm else []
    if getattr(args, "ct_p_mean", None) is not None:
        parts.append(f"P_mean {args.ct_p_mean:g}")
    return f"consistency (CT{''.join(' + ' + x for x in parts)})"


def demos(task: str, n: int, root: Path, noise: float, obs: str = "state", jump: float = 0.0) -> Path:
    """Scripted demonstrations, cached under ``root``; ``jump``: share of episodes in which the object
    jumps and the expert recovers (``record_demonstrations(jump=...)``)."""
    out = root / (f"{task}_{n}_{noise}" + ("" if obs == "state" else f"_{obs}") + (f"_jump{jump}" if jump else ""))
    if not (out.is_dir() and any(out.glob("episode_*.npz"))):
        shutil.rmtree(out, ignore_errors=True)
        rep = record_demonstrations(task, out, n, seed=0, noise=noise, obs=obs, jump=jump)
        log(f"demos {task} ({obs}{f', jump {jump}' if jump else ''}): {rep.successes}/{rep.attempts} expert "
            f"successes, {rep.wall_s:.1f} s")
    return out


def train(cls, ds, cfg, steps, seed, teacher=None, device="cpu"):
    extra = {"teacher": teacher} if teacher is not None else {}
    policy = cls.from_dataset(ds, cfg, seed=seed, **extra)
    m = train_policy(policy, ds, steps, seed=seed, log_every=max(steps // 4, 1), device=device,
                     progress=progress)
    log(f"  trained {cls.algo} {steps} steps in {m['wall_s']:.0f} s, loss {m['final_loss']:.4f}")
    return policy, m


def evaluate(policy, task, seeds, **kw):
    r = rollout_success(policy, task, episodes=seeds, seed=1000, progress=progress, **kw)
    r.pop("records")
    return r


# ----------------------------------------------------------------------------- 1. success


def budgets(args, obs: str) -> dict[str, int]:
    if obs == "pixels":
        return {"diffusion": args.pixel_steps_diffusion, "consistency": args.pixel_steps_consistency,
                "bc": args.pixel_steps_bc}
    return {"diffusion": args.steps_diffusion, "consistency": args.steps_consistency, "bc": args.steps_bc}


def bench_success(args, root: Path, results: dict, obs: str = "state") -> dict:
    """Train every method on each task's demonstrations and evaluate it on the same seeds, with fresh
    sampler noise per chunk and (where the sampler draws noise) with zero noise, as deployed."""
    cfgs, steps = configs(args, obs), budgets(args, obs)
    policies = {}
    rows = []
    for task in args.tasks:
        n_obs = cfgs["diffusion"]["n_obs_steps"]
        ds = ChunkDataset(load_episodes(demos(task, args.demos, root, args.noise, obs)), None, n_obs, 16)
        diff0, md0 = train(DiffusionPolicy, ds, cfgs["diffusion_x0"], steps["diffusion"], args.seed, device=args.device)
        cons, mc = train(ConsistencyPolicy, ds, cfgs["consistency"], steps["consistency"], args.seed,
                         device=args.device)
        bc, mb = train(BCPolicy, ds, cfgs["bc"], steps["bc"], args.seed, device=args.device)
        policies[task] = {"diffusion": diff0, "consistency": cons, "bc": bc}
        ct = ct_name(args, cfgs["consistency"]["dsm_weight"])
        entries = []
        if obs == "state" and not args.no_epsilon:  # Chi et al.'s epsilon prediction, for reference
            diff, md = train(DiffusionPolicy, ds, cfgs["diffusion"], steps["diffusion"], args.seed, device=args.device)
            entries.append(("diffusion (eps)", "DDIM-10", 10, diff, md, {}))
        entries += [("diffusion (x0-pred)", "DDPM-100", 100, diff0, md0, {"eta": 1.0, "num_inference_steps": 100}),
                    ("diffusion (x0-pred)", "DDIM-10", 10, diff0, md0, {}),
                    (ct, "1 step", 1, cons, mc, {"num_inference_steps": 1}),
                    (ct, "3 steps", 3, cons, mc, {"num_inference_steps": 3})]
        if args.distill:
            cd, mcd = train(ConsistencyPolicy, ds, cd_config(cfgs), steps["consistency"], args.seed, teacher=diff0,
                            device=args.device)
            entries += [("consistency (CD from x0-pred)", "1 step", 1, cd, mcd, {"num_inference_steps": 1}),
                        ("consistency (CD from x0-pred)", "3 steps", 3, cd, mcd, {"num_inference_steps": 3})]
        entries.append(("Gaussian BC (MSE)", "mean", 1, bc, mb, {}))
        for name, sampler, nfe, pol, m, setting in entries:
            saved = {k: getattr(pol.config, k) for k in setting}
            for k, v in setting.items():
                setattr(pol.config, k, v)
            r = evaluate(pol, task, args.eval_seeds)
            row = {"task": task, "obs": obs, "policy": name, "sampler": sampler, "nfe": nfe, **r,
                   "train_steps": m["steps"], "train_s": m["wall_s"]}
            if not isinstance(pol, BCPolicy) and not setting.get("eta"):  # DDPM stays stochastic by design
                row["zero_noise_success_rate"] = evaluate(pol, task, args.eval_seeds, zero_noise=True)["success_rate"]
            rows.append(row)
            zero = row.get("zero_noise_success_rate")
            log(f"  {task} {obs} {name} {sampler}: {r['success_rate']:.0%}"
                + (f", zero noise {zero:.0%}" if zero is not None else ""))
            for k, v in saved.items():
                setattr(pol.config, k, v)
    print(f"\n### 1. Success over {args.eval_seeds} seeds, {args.demos} demos (noise {args.noise}), {obs} obs, "
          f"{args.denoiser} denoiser\n")
    print("| task | policy | sampler | NFE | success, fresh noise | success, zero noise (as exported) | mean steps "
          "| ms / chunk | train steps | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        zero = r.get("zero_noise_success_rate")
        print(f"| {r['task']} | {r['policy']} | {r['sampler']} | {r['nfe']} | {r['successes']}/{r['episodes']} "
              f"({r['success_rate']:.0%}) | {'-' if zero is None else f'{zero:.0%}'} | {r['mean_steps']:.1f} "
              f"| {r['mean_infer_ms']:.1f} | {r['train_steps']} | {r['train_s']:.0f} |")
    sys.stdout.flush()
    results[f"success_{obs}"] = rows
    return policies


# ----------------------------------------------------------------------------- 2. latency


def _latency_policy(cls, denoiser, ds, **cfg):
    base = {"denoiser": denoiser, "mlp_hidden": (256, 256, 256), "down_dims": (64, 128, 256)}
    return cls.from_dataset(ds, {**base, **cfg}, seed=0).eval()


def bench_latency(args, root: Path, results: dict) -> None:
    ds = ChunkDataset(load_episodes(demos("pickcube", min(args.demos, 20), root, args.noise)), None, 2, 16)
    hist = {k: v[0] for k, v in ds.get(np.array([5]))["obs"].items()}
    rows = []
    for denoiser in args.latency_denoisers:
        diff = _latency_policy(DiffusionPolicy, denoiser, ds)
        cons = _latency_policy(ConsistencyPolicy, denoiser, ds)
        cons.denoiser.load_state_dict(diff.denoiser.state_dict())  # literally the same network
        variants = [("diffusion", "DDIM-10", diff, {"num_inference_steps": 10}),
                    ("diffusion", "DDIM-10 + self-guidance (batched)", diff, {"num_inference_steps": 10,
                                                                             "guidance_w": 1.0}),
                    ("consistency", "1 step", cons, {"num_inference_steps": 1}),
                    ("consistency", "3 steps", cons, {"num_inference_steps": 3})]
        for name, sampler, pol, setting in variants:
            for k, v in setting.items():
                setattr(pol.config, k, v)
            row = {"denoiser": denoiser, "policy": name, "sampler": sampler}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for _ in range(5):
                    pol.predict_action(hist)
                n = args.latency_calls if denoiser == "mlp" else max(args.latency_calls // 5, 10)
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    pol.predict_action(hist)
                    times.append(time.perf_counter() - t0)
                row[f"ms_{threads}t"] = 1e3 * float(np.median(times))
            torch.set_num_threads(1)
            pol.config.guidance_w = 0.0
            rows.append(row)
    print(f"\n### 2. Latency per action chunk (predict_action, batch 1, median; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    print("| denoiser | policy | sampler | 1 thread (ms) | 2 threads (ms) | speed-up vs DDIM-10 (1 thread) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if x["denoiser"] == r["denoiser"] and x["sampler"] == "DDIM-10")
        print(f"| {r['denoiser']} | {r['policy']} | {r['sampler']} | {r['ms_1t']:.2f} | {r['ms_2t']:.2f} | "
              f"{ref['ms_1t'] / r['ms_1t']:.1f}x |")
    sys.stdout.flush()
    results["latency"] = rows


# ----------------------------------------------------------------------------- 3. SGAC


def bench_sgac(args, root: Path, policies: dict, results: dict) -> None:
    """Each runtime setting on the same 50 seeds with and without the jump, for policies trained on
    plain demonstrations (which never saw a jump) and on demonstrations with recoveries. Executing
    one action per chunk ("closed loop", an inference every step like adaptive chunking) is the
    baseline that tells reactivity from SGAC's own contribution."""
    task = "pickcube"
    cfgs = configs(args)
    trained = {}
    for demos_kind in ("plain", "with recoveries"):
        if demos_kind == "plain" and task in policies:
            trained[demos_kind] = policies[task]
            continue
        path = demos(task, args.demos, root, args.noise, jump=0.0 if demos_kind == "plain" else args.sgac_jump)
        ds = ChunkDataset(load_episodes(path), None, 2, 16)
        diff, _ = train(DiffusionPolicy, ds, cfgs["diffusion_x0"], args.steps_diffusion, args.seed, device=args.device)
        cons, _ = train(ConsistencyPolicy, ds, cfgs["consistency"], args.steps_consistency, args.seed,
                        device=args.device)
        trained[demos_kind] = {"diffusion": diff, "consistency": cons}
    w, tau = args.guidance, args.tau
    # (label, algo, self-guidance w, adaptive tau, executed actions per chunk)
    settings = [("diffusion DDIM-10", "diffusion", 0.0, None, 8), ("diffusion DDIM-10", "diffusion", 0.0, tau, 8),
                ("diffusion DDIM-10", "diffusion", 0.0, 0.9, 8), ("diffusion DDIM-10", "diffusion", w, None, 8),
                ("diffusion DDIM-10", "diffusion", 1.0, None, 8), ("diffusion DDIM-10", "diffusion", w, 0.9, 8),
                ("diffusion DDIM-10", "diffusion", 0.0, None, 1),
                ("consistency 1 step", "consistency", 0.0, None, 8), ("consistency 1 step", "consistency", 0.0, 0.9, 8),
                ("consistency 1 step", "consistency", 0.0, None, 1)]
    rows = []
    for demos_kind, pols in trained.items():
        for name, algo, w, tau, n_act in settings:
            pol = pols[algo]
            pol.config.n_action_steps = n_act
            if algo == "diffusion":
                pol.config.guidance_w = w
            else:
                pol.config.num_inference_steps = 1
            for perturbed in (False, True):
                r = evaluate(pol, task, args.eval_seeds, adaptive_tau=tau, perturb=ObjectJump() if perturbed else None)
                rows.append({"demos": demos_kind, "policy": name, "guidance_w": w, "adaptive_tau": tau,
                             "n_action_steps": n_act, "perturbed": perturbed, **r})
                log(f"  sgac ({demos_kind} demos) {name} w={w} tau={tau} n_act={n_act} perturbed={perturbed}: "
                    f"{r['success_rate']:.0%}")
            pol.config.guidance_w = 0.0
            pol.config.n_action_steps = 8
    print(f"\n### 3. SGAC on PickCube, {args.eval_seeds} seeds: the cube jumps 5-7 cm when the gripper is about "
          f"to grasp it; demos with recoveries: a jump in {args.sgac_jump:.0%} of them\n")
    print("| demos | policy | self-guidance w | execution | success (no jump) | success (jump) | "
          "inferences / episode (jump) |")
    print("|---|---|---|---|---|---|---|")
    for a, b in zip(rows[::2], rows[1::2]):
        if a["adaptive_tau"] is not None:
            how = f"adaptive chunking, tau {a['adaptive_tau']}"
        elif a["n_action_steps"] == 1:
            how = "closed loop (1 of 16)"
        else:
            how = f"open loop ({a['n_action_steps']} of 16)"
        print(f"| {a['demos']} | {a['policy']} | {a['guidance_w']} | {how} | {a['success_rate']:.0%} | "
              f"{b['success_rate']:.0%} | {b['inferences_per_episode']:.1f} |")
    sys.stdout.flush()
    results["sgac"] = rows


# ----------------------------------------------------------------------------- 4. multimodality


def bench_modes(args, root: Path, results: dict) -> None:
    """Avoid: does each policy keep both ways round the pillar? Noise-drawing samplers are also run
    with zero noise, as ``serl-ctrl export`` deploys them: from the centre of a symmetric noise
    distribution a sampler may land between two symmetric modes. With ``--ct-dsm > 0`` pure
    consistency training is added, since the denoising term pulls 1-step samples toward the mean."""
    task = "avoid"
    ds = ChunkDataset(load_episodes(demos(task, args.demos, root, 0.0)), None, 2, 16)
    cfgs = configs(args)
    entries = [
        ("diffusion (eps) DDIM-10", DiffusionPolicy, cfgs["diffusion"], args.steps_modes),
        ("diffusion (x0-pred) DDIM-10", DiffusionPolicy, cfgs["diffusion_x0"], args.steps_modes // 3),
        (ct_name(args, cfgs["consistency"]["dsm_weight"]), ConsistencyPolicy, cfgs["consistency"],
         args.steps_modes * 2 // 3),
    ]
    if cfgs["consistency"]["dsm_weight"]:
        entries.append((ct_name(args, 0.0), ConsistencyPolicy, {**cfgs["consistency"], "dsm_weight": 0.0},
                        args.steps_modes * 2 // 3))
    entries.append(("Gaussian BC (MSE)", BCPolicy, cfgs["bc"], max(args.steps_modes // 3, 1)))
    if args.distill:  # from the x0 diffusion policy above, as long as consistency training
        entries.insert(-1, ("consistency (CD from x0-pred)", ConsistencyPolicy, cd_config(cfgs),
                            args.steps_modes * 2 // 3))
    rows = []
    trained = {}
    for base, cls, cfg, steps in entries:
        teacher = trained.get("diffusion (x0-pred) DDIM-10") if cfg.get("mode") == "cd" else None
        pol, m = train(cls, ds, cfg, steps, args.seed, teacher=teacher, device=args.device)
        trained[base] = pol
        for n_steps in ((1, 2, 3) if cls is ConsistencyPolicy else (None,)):
            name = base
            if n_steps is not None:
                pol.config.num_inference_steps = n_steps
                name = f"{base} {n_steps} step{'s' if n_steps > 1 else ''}"
            for zero in ((False, True) if cls is not BCPolicy else (False,)):
                r = rollout_success(pol, task, episodes=args.eval_seeds, seed=1000, zero_noise=zero)
                sides = r.pop("records")
                left = sum(1 for s in sides if s.get("side") == 1)
                right = sum(1 for s in sides if s.get("side") == -1)
                noise = "-" if cls is BCPolicy else ("zero (as exported)" if zero else "fresh")
                rows.append({"policy": name, "noise": noise, "train_steps": steps, **r, "left": left,
                             "right": right})
                log(f"  avoid {name} ({noise}): {r['success_rate']:.0%}, collisions {r['mean_collided']:.0%}, "
                    f"L/R {left}/{right}")
    print(f"\n### 4. Multimodality on Avoid ({args.demos} demos, the expert passes left or right by a coin flip), "
          f"{args.eval_seeds} seeds\n")
    print("| policy | noise | train steps | success | collisions | passed left | passed right |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['noise']} | {r['train_steps']} | {r['success_rate']:.0%} | "
              f"{r['mean_collided']:.0%} | {r['left']} | {r['right']} |")
    sys.stdout.flush()
    results["modes"] = rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["pickcube", "push"])
    p.add_argument("--demos", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.1, help="expert action noise of the demonstrations")
    p.add_argument("--eval-seeds", type=int, default=50)
    p.add_argument("--denoiser", default="mlp", choices=("mlp", "unet"))
    p.add_argument("--mlp-hidden", type=int, nargs="+", default=[512, 512, 512],
                   help="MLP denoiser widths for tables 1, 3 and 4 (the config default; table 2 uses 256 x 3)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every training budget")
    p.add_argument("--steps-diffusion", type=int, default=20000)
    p.add_argument("--steps-consistency", type=int, default=20000)
    p.add_argument("--steps-bc", type=int, default=10000)
    p.add_argument("--obs", nargs="+", default=["state"], choices=("state", "pixels"),
                   help="observations of table 1; pixels (front + wrist 128 px + proprioception, no object "
                        "state) take ~1 h per task on 2 CPU cores")
    p.add_argument("--pixel-steps-diffusion", type=int, default=3000)
    p.add_argument("--pixel-steps-consistency", type=int, default=3000)
    p.add_argument("--pixel-steps-bc", type=int, default=2000)
    p.add_argument("--no-epsilon", action="store_true", help="table 1 without the epsilon-prediction diffusion row")
    p.add_argument("--steps-modes", type=int, default=6000, help="Avoid: diffusion (eps) steps; x0-pred and BC "
                   "get a third, consistency two thirds")
    p.add_argument("--ct-dsm", type=float, default=None, help="consistency training: weight of the auxiliary "
                   "denoising loss (0 = pure consistency training; default: 1 on state, 10 on pixels)")
    p.add_argument("--ct-p-mean", type=float, default=None, help="consistency training: centre of the log-normal "
                   "over noise levels (default: ConsistencyConfig's, iCT's -1.1; higher trains the noisiest levels, "
                   "the 1-step map, more, at a cost in precision: README, multimodality)")
    p.add_argument("--distill", action="store_true", help="also distil a consistency policy from the diffusion one")
    p.add_argument("--guidance", type=float, default=0.3, help="self-guidance weight w for table 3 (also: 1.0)")
    p.add_argument("--tau", type=float, default=0.5, help="adaptive chunking threshold for table 3 (also: 0.9)")
    p.add_argument("--sgac-jump", type=float, default=0.5, help="table 3: share of the recovery demonstrations "
                   "in which the cube jumps")
    p.add_argument("--latency-denoisers", nargs="+", default=["mlp", "unet"])
    p.add_argument("--latency-calls", type=int, default=200)
    p.add_argument("--only", nargs="+", default=["success", "latency", "sgac", "modes"])
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, not the methods")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where policies train (cuda: a GPU; the random draws stay "
                   "the CPU's, so a GPU run trains on the same minibatches and noise)")
    p.add_argument("--out", default="runs/bench_imitation", help="demonstrations are cached here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.demos, args.eval_seeds, args.latency_calls = 20, 5, 20
        args.steps_diffusion = args.steps_consistency = args.steps_bc = args.steps_modes = 200
        args.pixel_steps_diffusion = args.pixel_steps_consistency = args.pixel_steps_bc = 20
    for name in ("steps_diffusion", "steps_consistency", "steps_bc", "steps_modes", "pixel_steps_diffusion",
                 "pixel_steps_consistency", "pixel_steps_bc"):
        setattr(args, name, max(1, int(getattr(args, name) * args.scale)))
    torch.set_num_threads(1)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args)}
    start = time.perf_counter()
    policies: dict = {}
    if "success" in args.only:
        for obs in args.obs:
            found = bench_success(args, root, results, obs)
            if obs == "state" or not policies:
                policies = found  # SGAC (table 3) perturbs the state policies when there are any
    if "latency" in args.only:
        bench_latency(args, root, results)
    if "sgac" in args.only:
        bench_sgac(args, root, policies, results)
    if "modes" in args.only:
        bench_modes(args, root, results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    if args.json:
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
