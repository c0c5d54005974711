"""Scripted-expert success rates per task and backend (goal: >= 95% on both backends).

    python bench/bench_experts.py [--seeds 100] [--json]

Episode ``i`` uses seed ``1000 + i``: a different range from the seeds the tests use.
"""

from __future__ import annotations

import argparse
import json

from serl_ctrl.data.demos import record_demonstrations
from serl_ctrl.envs import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--backends", nargs="+", default=["mujoco", "pybullet"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    print("| task | backend | success | mean steps | wall (s) |")
    print("|---|---|---|---|---|")
    for task in args.tasks:
        for backend in args.backends:
            r = record_demonstrations(task, None, args.seeds, backend=backend, seed=1000).as_dict()
            rows.append(r)
            print(f"| {task} | {backend} | {r['successes']}/{r['episodes']} ({r['success_rate']:.0%}) "
                  f"| {r['mean_length']:.1f} | {r['wall_s']:.1f} |", flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
