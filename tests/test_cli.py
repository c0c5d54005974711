"""The `serl-ctrl` command line: the installed script, --json, errors, lazy imports, progress bars."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serl_ctrl import __version__, cli
from serl_ctrl.utils import progress as progress_mod
from serl_ctrl.utils.progress import progress

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "mujoco", "pybullet", "rclpy", "numpy", "onnxruntime", "gymnasium", "tqdm")


def _serl_ctrl_exe() -> str:
    """The console script pip installed next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "serl-ctrl"
    exe = str(beside) if beside.is_file() else shutil.which("serl-ctrl")
    assert exe, "the serl-ctrl console script is not installed: run bash scripts/install.sh"
    return exe


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [_serl_ctrl_exe(), *args], capture_output=True, text=True, timeout=120, env=full_env,
        stdin=subprocess.DEVNULL,
    )


def _last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output on stdout"
    obj = json.loads(lines[-1])
    assert isinstance(obj, dict)
    return obj


@pytest.fixture
def scratch_commands(monkeypatch):
    """Register commands for one test only."""
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    return cli.COMMANDS


# ----------------------------------------------------------------------------- the installed script


def test_help_runs_and_lists_commands():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    assert "usage: serl-ctrl" in out.stdout
    assert "info" in out.stdout
    assert out.stderr == ""


def test_subcommand_help_shows_common_flags():
    out = _run("info", "--help")
    assert out.returncode == 0, out.stderr
    assert "--json" in out.stdout and "--check-gl" in out.stdout


def test_version_flag():
    out = _run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"serl-ctrl {__version__}"


def test_info_json_last_line_is_one_object():
    out = _run("info", "--json")
    assert out.returncode == 0, out.stderr
    info = _last_json(out.stdout)
    assert info["serl_ctrl"] == __version__
    # the installed script runs this checkout (pip install -e .), not some other copy
    assert Path(info["package_dir"]) == ROOT / "serl_ctrl"
    assert info["packages"]["numpy"] == np.__version__
    assert set(info["packages"]) >= {"numpy", "torch", "mujoco", "pybullet", "onnxruntime"}
    assert all(isinstance(v, str) and v for v in info["packages"].values())
    assert set(info["data_dirs"]) == {"sim", "policies", "launch", "config"}
    for name, where in info["data_dirs"].items():
        if (ROOT / name).is_dir():
            assert Path(where) == ROOT / name
    assert "mujoco_gl" in info and "python" in info


def test_info_reports_the_configured_gl_backend():
    out = _run("info", "--json", env={"MUJOCO_GL": "osmesa"})
    assert _last_json(out.stdout)["mujoco_gl"] == "osmesa"


def test_info_human_output_is_not_json():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    assert f"serl_ctrl: {__version__}" in out.stdout
    assert "packages:" in out.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.stdout.strip().splitlines()[-1])


def test_unknown_subcommand_is_a_clear_usage_error():
    out = _run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice: 'frobnicate'" in out.stderr
    assert "info" in out.stderr  # tells which commands exist
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_usage_errors_under_json_end_stdout_with_an_error_object():
    out = _run("info", "--json", "--no-such-option")
    assert out.returncode == 2
    assert "unrecognized arguments: --no-such-option" in out.stderr
    assert "unrecognized arguments" in _last_json(out.stdout)["error"]


def test_missing_subcommand_exits_2():
    out = _run()
    assert out.returncode == 2
    assert "required" in out.stderr


def test_module_entry_point_works_without_the_script():
    out = subprocess.run(
        [sys.executable, "-m", "serl_ctrl.cli", "info", "--json"], capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert _last_json(out.stdout)["serl_ctrl"] == __version__


def test_help_imports_no_heavy_module():
    """`serl-ctrl --help` must stay fast: nothing heavy may be imported to build the parser."""
    code = (
        "import sys\nfrom serl_ctrl import cli\n"
        "for argv in (['--help'], ['info', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"


# ----------------------------------------------------------------------------- the framework


def test_registered_command_json_and_seed(scratch_commands, capsys):
    seen = {}

    def add_arguments(parser):
        parser.add_argument("--n", type=int, default=3)

    def run(args):
        seen.update(vars(args))
        print("working ...")  # human lines may come before the JSON line
        return {"n": args.n, "seed": args.seed, "arr": np.arange(3), "x": np.float32(0.5),
                "bad": math.nan, "where": Path("/tmp/x")}

    cli.register("demo-test", "a test command", add_arguments, run, seed=7)
    assert cli.main(["demo-test", "--json", "--n", "5"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "working ..."
    assert _last_json(out) == {"n": 5, "seed": 7, "arr": [0, 1, 2], "x": 0.5, "bad": None, "where": "/tmp/x"}
    assert seen["json"] is True
    assert cli.main(["demo-test", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 3" in out and "n: 3" in out


def test_seed_flag_only_where_registered(scratch_commands, capsys):
    cli.register("noseed", "no seed here", None, lambda args: {"has_seed": hasattr(args, "seed")})
    assert cli.main(["noseed", "--json"]) == 0
    assert _last_json(capsys.readouterr().out) == {"has_seed": False}
    with pytest.raises(SystemExit) as exc:
        cli.main(["noseed", "--seed", "1"])
    assert exc.value.code == 2


def test_bad_input_from_serl_ctrl_is_one_line_exit_2(scratch_commands, capsys):
    from serl_ctrl import paths

    cli.register("bad", "raises ValueError inside serl_ctrl", None, lambda args: paths.data_dir("nope"))
    assert cli.main(["bad"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "serl-ctrl bad: error: unknown data folder 'nope'; expected one of: sim, policies, launch, config"
    ]
    assert cli.main(["bad", "--json"]) == 2
    captured = capsys.readouterr()
    assert _last_json(captured.out) == {
        "error": "unknown data folder 'nope'; expected one of: sim, policies, launch, config"
    }
    assert "Traceback" not in captured.err


def test_file_not_found_and_key_error_are_bad_input(scratch_commands, capsys, tmp_path, monkeypatch):
    from serl_ctrl import paths

    monkeypatch.setenv(paths.ENV_OVERRIDE, str(tmp_path))
    (tmp_path / "policies").mkdir()
    cli.register("nopolicy", "missing policy", None, lambda args: paths.find_policy("ghost"))
    assert cli.main(["nopolicy", "--json"]) == 2
    assert "policy 'ghost' not found" in _last_json(capsys.readouterr().out)["error"]


def test_error_messages_are_one_clean_line():
    assert cli._error_message(KeyError("no task 'lift'")) == "no task 'lift'"  # no repr quotes
    assert cli._error_message(ValueError("two\n  lines")) == "two lines"
    assert cli._error_message(FileNotFoundError(2, "No such file or directory", "/x/y")) == (
        "No such file or directory: /x/y"
    )
    assert cli._error_message(FileNotFoundError("policy 'p' not found")) == "policy 'p' not found"
    assert cli._error_message(ValueError()) == "ValueError"


def test_unexpected_errors_keep_their_traceback(scratch_commands):
    def run(args):
        raise ValueError("raised in a test, i.e. outside serl_ctrl")

    cli.register("boom", "raises outside serl_ctrl", None, run)
    with pytest.raises(ValueError, match="outside serl_ctrl"):
        cli.main(["boom"])

    cli.register("boom2", "a bug", None, lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom2"])


def test_library_value_error_is_not_mistaken_for_bad_input(scratch_commands):
    cli.register("npbad", "numpy raises", None, lambda args: np.zeros(3).reshape(2, 2))
    with pytest.raises(ValueError):
        cli.main(["npbad"])


def test_run_must_return_a_dict(scratch_commands):
    cli.register("notdict", "returns a list", None, lambda args: [1, 2])
    with pytest.raises(TypeError, match="must return a dict"):
        cli.main(["notdict"])


def test_lazy_string_references_are_resolved_only_when_used(scratch_commands, capsys):
    cli.register("lazy", "lazy command", "serl_ctrl.no_such_module:add_arguments",
                 "serl_ctrl.no_such_module:run")
    # a broken subcommand must not break --help or the other commands
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "lazy command" in capsys.readouterr().out
    assert cli.main(["info", "--json"]) == 0
    capsys.readouterr()
    with pytest.raises(ModuleNotFoundError):
        cli.main(["lazy"])


def test_duplicate_registration_is_refused(scratch_commands):
    with pytest.raises(ValueError, match="registered twice"):
        cli.register("info", "again", None, lambda args: {})


def test_human_output_format():
    lines = cli._format_human({"a": 1, "nested": {"b": "x", "c": [1, 2]}, "paths": ["p", "q"]})
    assert lines == ["a: 1", "nested:", "  b: x", "  c: [1, 2]", "paths:", "  - p", "  - q"]


# ----------------------------------------------------------------------------- progress bars


def test_progress_is_silent_when_stderr_is_not_a_tty(monkeypatch, capsys):
    monkeypatch.delenv(progress_mod.ENV_VAR, raising=False)
    bar = progress(range(4), desc="x")
    assert not bar.enabled
    assert list(bar) == [0, 1, 2, 3]
    bar.set_postfix(loss=0.5)
    assert bar.postfix == {"loss": 0.5} and bar.n == 4 and len(bar) == 4
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_forced_on_draws_on_stderr_only(monkeypatch, capsys):
    monkeypatch.setenv(progress_mod.ENV_VAR, "1")
    fake_err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", fake_err)
    with progress(total=3, desc="demos", mininterval=0) as bar:
        assert bar.enabled
        for _ in range(3):
            bar.update(1)
        bar.set_postfix(success=0.75)
    text = fake_err.getvalue()
    assert "demos" in text and "3/3" in text and "success=0.75" in text
    assert capsys.readouterr().out == ""


def test_progress_env_off_and_disable_win(monkeypatch):
    monkeypatch.setenv(progress_mod.ENV_VAR, "0")
    assert not progress_mod.progress_enabled(io.StringIO())

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(progress_mod.ENV_VAR)
    assert progress_mod.progress_enabled(Tty())
    monkeypatch.setenv(progress_mod.ENV_VAR, "1")
    assert not progress(range(2), disable=True).enabled


def test_progress_over_a_generator_without_total(monkeypatch):
    monkeypatch.delenv(progress_mod.ENV_VAR, raising=False)
    bar = progress(i for i in range(3))
    assert bar.total is None and list(bar) == [0, 1, 2]
    with pytest.raises(TypeError):
        len(bar)
