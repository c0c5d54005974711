"""Launch files and parameter files, checked without launch/launch_ros (no wheels exist for them).

Each launch file is parsed (ast) and every ``Node(package=..., executable=..., name=...,
parameters=[...], remappings=...)`` in it is checked against the package: the executable is a
console script in setup.py whose module defines ``main``; the YAML files it loads exist and hold
exactly the parameters the node declares (serl_ctrl/ros/params.py), each with a description
comment and a valid value; inline parameters are declared by that node; every
``LaunchConfiguration`` is a declared launch argument. Where ``launch_ros`` is importable (a ROS
installation), the files are also imported and their launch descriptions built.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from serl_ctrl.ros.params import NODES, validate

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
CONFIG_FILES = sorted((ROOT / "config").glob("*.yaml"))
BUILTIN_PARAMS = {"use_sim_time"}
# Topic names the nodes use (relative; cameras and objects by pattern) - what remappings may target.
NODE_TOPICS = re.compile(
    r"^(joint_states|tcp_pose|tcp_twist|task/reward|transitions|policy/onnx|cartesian_controller/target_(pose|twist)"
    r"|gripper_controller/commands|joint_position_controller/commands|joint_trajectory_controller/joint_trajectory"
    r"|[a-z_]+/(image_raw|camera_info)|objects/[a-z_]+/pose|sim_bridge/(reset|pause))$"
)


def _console_scripts() -> dict[str, str]:
    """name -> "module:function" from setup.py's entry_points (read from the AST, not executed)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(r"\s*([\w.-]+)\s*=\s*([\w.]+):(\w+)\s*", node.value)
            if m:
                out[m.group(1)] = f"{m.group(2)}:{m.group(3)}"
    return out


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _strings(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _launch_nodes(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) in ("Node", "LifecycleNode")]


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def test_there_are_launch_and_config_files():
    assert {p.name for p in LAUNCH_FILES} >= {"sim.launch.py", "robot.launch.py", "train.launch.py",
                                              "language.launch.py"}
    assert {p.name for p in CONFIG_FILES} >= {f"{n}.yaml" for n in NODES}


def test_setup_py_registers_every_node_executable():
    scripts = _console_scripts()
    for name in NODES:
        assert scripts.get(name) == f"serl_ctrl.ros.{name}:main", f"setup.py lacks '{name} = serl_ctrl.ros.{name}:main'"
        module = ast.parse((ROOT / "serl_ctrl" / "ros" / f"{name}.py").read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in module.body), name


@pytest.mark.parametrize("node", sorted(NODES))
def test_each_node_declares_its_whole_table(node):
    """The table the tests check is the one the node declares (declare(self, <TABLE>))."""
    table_name = {"sim_bridge": "SIM_BRIDGE", "policy_node": "POLICY_NODE", "actor_node": "ACTOR_NODE",
                  "learner_node": "LEARNER_NODE", "speech_node": "SPEECH_NODE", "planner_node": "PLANNER_NODE"}[node]
    tree = ast.parse((ROOT / "serl_ctrl" / "ros" / f"{node}.py").read_text())
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and _call_name(c) == "declare"]
    assert [c.args[1].id for c in calls if len(c.args) == 2 and isinstance(c.args[1], ast.Name)] == [table_name]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_files_hold_every_declared_parameter_described(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and len(data) == 1, f"{path.name}: one node per file"
    (node, body), = data.items()
    assert node in NODES, f"{path.name}: {node!r} is not a serl_ctrl node"
    params = body["ros__parameters"]
    declared = {p.name: p for p in NODES[node]}
    assert set(params) == set(declared), (
        f"{path.name}: missing {sorted(set(declared) - set(params))}, unknown {sorted(set(params) - set(declared))}")
    for name, value in params.items():
        assert validate(declared[name], value) == "", validate(declared[name], value)
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^    (\w+):", line)
        if m:
            assert lines[i - 1].strip().startswith("#"), f"{path.name}: {m.group(1)} has no description comment"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_nodes_match_the_package(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    scripts = _console_scripts()
    nodes = _launch_nodes(tree)
    assert nodes, f"{path.name} starts no Node"
    for call in nodes:
        package, executable, name = (_kw(call, k) for k in ("package", "executable", "name"))
        assert isinstance(package, ast.Constant) and package.value == "serl_ctrl"
        assert isinstance(executable, ast.Constant) and executable.value in scripts, (
            f"{path.name}: executable {getattr(executable, 'value', executable)!r} is not in setup.py")
        exe = executable.value
        assert exe in NODES
        assert isinstance(name, ast.Constant) and name.value == exe, "node name = the YAML's top-level key"
        declared = {p.name for p in NODES[exe]} | BUILTIN_PARAMS
        params = _kw(call, "parameters")
        assert isinstance(params, ast.List), f"{path.name}: {exe} parameters must be a list"
        yamls = [s for s in _strings(params) if s.endswith(".yaml")]
        assert yamls == [f"{exe}.yaml"], f"{path.name}: {exe} should load config/{exe}.yaml, loads {yamls}"
        assert list(_config(yamls[0])) == [exe]
        for element in params.elts:
            if isinstance(element, ast.Dict):
                for key, value in zip(element.keys, element.values):
                    assert isinstance(key, ast.Constant) and key.value in declared, (
                        f"{path.name}: {exe} gets undeclared parameter {getattr(key, 'value', key)!r}")
                    if isinstance(value, ast.Constant) and key.value != "use_sim_time":
                        spec = next(p for p in NODES[exe] if p.name == key.value)
                        assert validate(spec, value.value) == "", validate(spec, value.value)
        if exe == "sim_bridge":  # the simulator is the clock
            assert "use_sim_time" in ast.unparse(params) and "'use_sim_time': False" in ast.unparse(params)
        if exe in ("policy_node",) and path.name == "sim.launch.py":
            assert "'use_sim_time': True" in ast.unparse(params)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_arguments_are_declared_and_used(path):
    tree = ast.parse(path.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    declared = {c.args[0].value for c in calls if _call_name(c) == "DeclareLaunchArgument"
                and c.args and isinstance(c.args[0], ast.Constant)}
    # robot.launch.py declares its topic arguments from a table
    table = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "TOPICS":
            table = {row[1]: row for row in ast.literal_eval(node.value)}
    declared |= set(table)
    used = {c.args[0].value for c in calls if _call_name(c) == "LaunchConfiguration"
            and c.args and isinstance(c.args[0], ast.Constant)}
    if table:
        used |= set(table)  # LaunchConfiguration(arg) for each row
    assert used <= declared, f"{path.name}: undeclared launch arguments {sorted(used - declared)}"
    assert declared <= used, f"{path.name}: unused launch arguments {sorted(declared - used)}"
    for topic, _arg, default, _text in table.values():
        assert NODE_TOPICS.match(topic), f"{path.name}: remaps {topic!r}, which no serl_ctrl node uses"
        assert default.startswith("/")


def test_launch_files_build_where_launch_ros_exists():
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installed (no wheels exist; a ROS installation has it)")
    for path in LAUNCH_FILES:
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.generate_launch_description().entities
