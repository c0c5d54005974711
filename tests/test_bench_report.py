"""bench/bench_sac_learning.py --report: merging runs made separately (no training here)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sac_learning.py"
ROWS = [{"env_steps": 1000, "success_rate": 0.5, "wall_s": 60.0}, {"env_steps": 2000, "success_rate": 0.95, "wall_s": 120.0}]


def _run_dir(root: Path, name: str, variant: str, task: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "curves.json").write_text(json.dumps({f"{variant}/0": ROWS}))
    (d / "settings.json").write_text(json.dumps({"task": task, "obs": "state", "reward": "sparse", "demos": 7,
                                                 "steps": 2000, "eval_every": 1000, "eval_episodes": 20}))
    return d


def _report(*dirs: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), "--report", *map(str, dirs), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)


def test_report_titles_merged_runs_from_their_settings(tmp_path):
    a, b = _run_dir(tmp_path, "a", "ours", "push"), _run_dir(tmp_path, "b", "sb3", "push")
    r = _report(a, b, out=tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    assert "push state, sparse reward, 7 demos for 'ours'" in r.stdout  # not the flags' defaults (pickcube, dense)
    assert "| ours | 1 | 2000 |" in r.stdout and "| sb3 | 1 | 2000 |" in r.stdout
    assert json.loads((tmp_path / "merged" / "settings.json").read_text())["task"] == "push"
    assert (tmp_path / "merged" / "learning_curves.png").stat().st_size > 0


def test_report_refuses_runs_of_different_settings(tmp_path):
    a, c = _run_dir(tmp_path, "a", "ours", "push"), _run_dir(tmp_path, "c", "sb3", "pickcube")
    r = _report(a, c, out=tmp_path / "merged")
    assert r.returncode != 0
    assert "measured different settings" in r.stderr and "task 'push' vs 'pickcube'" in r.stderr
    assert not (tmp_path / "merged" / "curves.json").exists()
