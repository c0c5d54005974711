"""``serl-ctrl``: the one command line of serl_ctrl (``serl-ctrl --help``, ``serl-ctrl info --json``).

Adding a subcommand: one function + one registration line
----------------------------------------------------------
1. Write ``run(args) -> dict`` (plus ``add_arguments(parser)`` if it takes options), here or in the
   module that owns the work. Import heavy modules (torch, mujoco, rclpy ...) *inside* ``run`` so
   that ``serl-ctrl --help`` stays fast.
2. Add one ``register(...)`` line to the REGISTRY section at the bottom of this file::

       register("demos", "record scripted demonstrations", "serl_ctrl.envs.demos:add_arguments",
                "serl_ctrl.envs.demos:run", seed=0)

   ``add_arguments`` and ``run`` are functions or ``"module:function"`` strings. Strings are
   imported only when that subcommand is used, so a slow or broken import in one subcommand never
   touches ``--help`` or the others.

What every subcommand gets without writing it:

* ``--json``: the LAST line of stdout is exactly one JSON object, the dict ``run`` returned
  (numpy values, paths and non-finite floats are converted). Without ``--json`` the dict is printed
  as ``key: value`` lines. ``run`` may print other lines before it; ``args.json`` tells it whether
  a human is reading. Progress bars go to stderr: use ``serl_ctrl.utils.progress.progress``.
* ``--seed N`` when registered with ``seed=<default>``: the command's own seed (``args.seed``).
  Do not add another ``--seed`` or ``--json`` in ``add_arguments``.
* Errors: a ``ValueError``, ``FileNotFoundError`` or ``KeyError`` raised from serl_ctrl code is
  bad input: one line ``serl-ctrl <cmd>: error: <message>`` on stderr, exit code 2 and, with
  ``--json``, a last stdout line ``{"error": "<message>"}``. Any other exception (or one of those
  raised inside a library) keeps its traceback, exit code 1. ``SERL_CTRL_TRACEBACK=1`` shows the
  traceback for bad input too. Usage errors (unknown subcommand or option) also exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Any

PROG = "serl-ctrl"
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError, KeyError)
EXIT_BAD_INPUT = 2

_PACKAGE_DIR = Path(__file__).resolve().parent

Func = Callable[..., Any] | str


@dataclasses.dataclass(frozen=True)
class Command:
    """A registered subcommand (see the module docstring)."""

    name: str
    help: str
    add_arguments: Func | None
    run: Func
    seed: int | None = None
    description: str | None = None


COMMANDS: dict[str, Command] = {}


def register(
    name: str,
    help: str,  # noqa: A002 - argparse's own word
    add_arguments: Func | None,
    run: Func,
    *,
    seed: int | None = None,
    description: str | None = None,
) -> Command:
    """Register subcommand ``name``; ``seed`` (an int) adds ``--seed`` with that default."""
    if name in COMMANDS:
        raise ValueError(f"subcommand {name!r} is registered twice")
    command = Command(name, help, add_arguments, run, seed, description)
    COMMANDS[name] = command
    return command


def _resolve(func: Func) -> Callable[..., Any]:
    if callable(func):
        return func
    module_name, _, attr = func.partition(":")
    if not attr:
        raise TypeError(f"expected 'module:function', got {func!r}")
    return getattr(importlib.import_module(module_name), attr)


# ----------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors also end stdout with a JSON error line under --json."""

    json_errors = False

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        if _Parser.json_errors:
            _print_json({"error": message})
        raise SystemExit(EXIT_BAD_INPUT)


def _selected_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if registered."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser; ``add_arguments`` runs for ``selected`` only (or for all when ``"*"``)."""
    from serl_ctrl import __version__

    parser = _Parser(
        prog=PROG,
        description="serl_ctrl: robot learning in simulation, from demonstrations to a ROS 2 robot. "
        "Every subcommand takes --help and --json.",
        epilog=f"Run '{PROG} <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    sub.required = True
    for command in COMMANDS.values():
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
        )
        p.add_argument(
            "--json",
            action="store_true",
            help="print the results as one JSON object on the last line of stdout",
        )
        if command.seed is not None:
            p.add_argument(
                "--seed",
                type=int,
                default=command.seed,
                help=f"random seed of this command (default: {command.seed})",
            )
        if command.add_arguments is not None and selected in (command.name, "*"):
            _resolve(command.add_arguments)(p)
    return parser


# ----------------------------------------------------------------------------- output


def _jsonable(value: Any) -> Any:
    """``value`` with everything json.dumps cannot write turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), allow_nan=False, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def _format_human(obj: Any, indent: int = 0) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(_format_human(value, indent + 1))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key}:")
            for item in value:
                lines.extend(_format_human(item, indent + 1))
                lines.append("")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, PurePath)) for v in value):
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}  - {v}" for v in value)
        else:
            shown = _jsonable(value)
            if isinstance(shown, (list, dict)):
                shown = json.dumps(shown)
            lines.append(f"{pad}{key}: {shown}")
    return lines


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(result)
    else:
        for line in _format_human(result):
            print(line)
        sys.stdout.flush()


def _raised_in_serl_ctrl(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is serl_ctrl code (not a library's)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(_PACKAGE_DIR)
    except ValueError:
        return False
    return True


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]  # str(KeyError('x')) would add quotes
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename:
        return f"{exc.strerror or 'no such file'}: {exc.filename}"  # not "[Errno 2] ...: '...'"
    message = str(exc).strip()
    if not message:
        return type(exc).__name__
    return " ".join(message.split())  # one line


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``serl-ctrl`` with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. `serl-ctrl info | head -1`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before torch is imported: OpenMP threads that spin while waiting made two-thread training
    # 7x slower next to a simulator on 2 cores (bench/bench_sac_updates.py); passive waits don't.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _Parser.json_errors = "--json" in argv
    parser = build_parser(_selected_command(argv))
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    as_json = bool(getattr(args, "json", False))
    try:
        result = _resolve(command.run)(args)
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise TypeError(f"{command.name}: run() must return a dict, not {type(result).__name__}")
        _print_result(result, as_json)
        return 0
    except BAD_INPUT_ERRORS as exc:
        if not _raised_in_serl_ctrl(exc):
            raise
        message = _error_message(exc)
        if os.environ.get("SERL_CTRL_TRACEBACK", "") not in ("", "0"):
            traceback.print_exc()
        sys.stdout.flush()
        print(f"{PROG} {command.name}: error: {message}", file=sys.stderr)
        if as_json:
            _print_json({"error": message})
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG} {command.name}: interrupted", file=sys.stderr)
        return 130


# ============================================================================= subcommands


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check-gl",
        action="store_true",
        help="also render a few MuJoCo frames offscreen with the configured backend and time them",
    )


def _dist_version(*names: str) -> str:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "missing"


def _check_mujoco_gl(width: int = 64, seconds: float = 0.5) -> dict[str, Any]:
    """Render offscreen with the configured MUJOCO_GL backend; report success and frame rate."""
    import time

    try:
        import mujoco
    except ImportError as exc:
        return {"ok": False, "error": f"mujoco not importable: {exc}"}
    xml = """<mujoco><worldbody><light pos="0 0 1"/>
      <geom type="plane" size="1 1 .1" pos="0 0 -.1"/><geom type="sphere" size=".1" rgba="1 0 0 1"/>
      <camera name="c" pos="0 -0.6 0.3" xyaxes="1 0 0 0 0.5 1"/></worldbody></mujoco>"""
    try:
        model = mujoco.MjModel.from_xml_string(xml)
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)  # without it geom poses are zero and the frame is black
        start = time.perf_counter()
        renderer = mujoco.Renderer(model, width, width)
        try:
            renderer.update_scene(data, camera="c")
            frame = renderer.render()
            first = time.perf_counter() - start
            frames, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                renderer.update_scene(data, camera="c")
                renderer.render()
                frames += 1
            fps = frames / (time.perf_counter() - t0)
        finally:
            renderer.close()
    except Exception as exc:  # any backend failure is a finding, not a crash
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "ok": bool(frame.mean() > 0),
        "first_frame_s": round(first, 3),
        "fps": round(fps, 1),
        "size": f"{width}x{width}",
        "mean_pixel": round(float(frame.mean()), 2),
    }


def _info_run(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util
    import platform

    from serl_ctrl import __version__, paths

    packages = {
        "numpy": _dist_version("numpy"),
        "torch": _dist_version("torch"),
        "mujoco": _dist_version("mujoco"),
        "pybullet": _dist_version("pybullet"),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
        "onnx": _dist_version("onnx"),
        "gymnasium": _dist_version("gymnasium"),
    }
    if importlib.util.find_spec("rclpy") is None:
        rclpy = "missing"
    else:  # a ROS install has no pip metadata for rclpy; the community wheels do
        rclpy = _dist_version("ros-rclpy", "rclpy")
        if rclpy == "missing":
            rclpy = "available"
    data_dirs: dict[str, str | None] = {}
    for name in paths.DATA_NAMES:
        try:
            data_dirs[name] = str(paths.data_dir(name))
        except FileNotFoundError:
            data_dirs[name] = None
    mujoco_gl = os.environ.get("MUJOCO_GL", "")
    result: dict[str, Any] = {
        "serl_ctrl": __version__,
        "package_dir": str(_PACKAGE_DIR),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(terse=True),
        "packages": packages,
        "ros": {"rclpy": rclpy, "ROS_DISTRO": os.environ.get("ROS_DISTRO", "unset")},
        "mujoco_gl": mujoco_gl or "unset (MuJoCo then uses glfw, which needs a display)",
        "pyopengl_platform": os.environ.get("PYOPENGL_PLATFORM", "unset"),
        "data_dirs": data_dirs,
        "data_roots": [f"{label}: {root}" for label, root in paths.data_roots()],
    }
    if args.check_gl:
        result["gl_check"] = _check_mujoco_gl()
    return result


# ============================================================================= REGISTRY
# One line per subcommand: register(name, help, add_arguments, run, seed=<default or None>).
# add_arguments / run: a function, or "module:function" (imported only when the command runs).

register(
    "info",
    "versions, MuJoCo GL backend and data folders of this installation",
    _info_arguments,
    _info_run,
)
register(
    "demos",
    "record scripted demonstrations of a task (episodes, success rate, optional video)",
    "serl_ctrl.commands.demos:add_arguments",
    "serl_ctrl.commands.demos:run",
    seed=0,
)
register(
    "video",
    "render a recorded episode to .mp4 or .gif",
    "serl_ctrl.commands.video:add_arguments",
    "serl_ctrl.commands.video:run",
)
register(
    "train",
    "train a policy (SAC/RLPD, state or pixels, optional demos); writes a run folder and policy.onnx",
    "serl_ctrl.commands.train:add_arguments",
    "serl_ctrl.commands.train:run",
    seed=0,
)
register(
    "correct",
    "recognise a spoken (--wav) or typed (--text) correction: text, parsed command, confidence, latency",
    "serl_ctrl.commands.correct:add_arguments",
    "serl_ctrl.commands.correct:run",
)
register(
    "eval",
    "evaluate an exported policy in simulation: success rate, return, latency",
    "serl_ctrl.commands.eval:add_arguments",
    "serl_ctrl.commands.eval:run",
    seed=1000,
)
register(
    "reward-classifier",
    "train a success classifier on recorded episodes (a learned reward for train --reward-classifier)",
    "serl_ctrl.commands.reward_classifier:add_arguments",
    "serl_ctrl.commands.reward_classifier:run",
    seed=0,
)
register(
    "export",
    "export a run or checkpoint to one .onnx policy file + model card (--check: parity torch vs onnxruntime)",
    "serl_ctrl.commands.export:add_arguments",
    "serl_ctrl.commands.export:run",
)

register(
    "train-planner",
    "train the language planner (observation history -> next instruction) on labelled demonstrations",
    "serl_ctrl.commands.planner:add_train_arguments",
    "serl_ctrl.commands.planner:run_train",
    seed=0,
)
register(
    "finetune-planner",
    "improve a language planner from logged corrections (mixed with its demonstrations)",
    "serl_ctrl.commands.planner:add_finetune_arguments",
    "serl_ctrl.commands.planner:run_finetune",
    seed=0,
)
register(
    "run",
    "run the language hierarchy (planner + language-conditioned policy) in simulation, with corrections",
    "serl_ctrl.commands.run:add_arguments",
    "serl_ctrl.commands.run:run",
    seed=10000,
)


if __name__ == "__main__":  # python -m serl_ctrl.cli ...
    sys.exit(main())
