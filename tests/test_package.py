"""Packaging: package.xml, setup.py/setup.cfg, the install scripts, and serl_ctrl.paths.

These read the real files of the checkout, so they fail when a dependency is imported but not
declared, a data file would not be installed, or a script drifts from the README.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import importlib.util
import re
import runpy
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import serl_ctrl
from serl_ctrl import paths

ROOT = Path(__file__).resolve().parent.parent
PKG_DIR = ROOT / "serl_ctrl"

# Python modules that come from ROS 2 (apt / colcon workspace / the jazzy wheels), never from pip.
ROS_PYTHON_PACKAGES = {
    "rclpy", "launch", "launch_ros", "launch_testing", "launch_testing_ros", "ament_index_python",
    "rosidl_runtime_py", "rosbag2_py", "rclpy_message_converter", "tf2_ros", "tf2_py",
    "tf2_geometry_msgs", "message_filters", "cv_bridge", "image_geometry", "rcl_interfaces",
    "builtin_interfaces", "lifecycle_msgs", "rosgraph_msgs", "std_msgs", "sensor_msgs",
    "geometry_msgs", "trajectory_msgs", "std_srvs", "diagnostic_msgs", "control_msgs",
    "action_msgs", "unique_identifier_msgs", "visualization_msgs", "nav_msgs", "shape_msgs",
}


# ----------------------------------------------------------------------------- helpers


def _package_xml() -> ET.Element:
    return ET.parse(ROOT / "package.xml").getroot()


def _declared(root: ET.Element, *tags: str) -> set:
    return {el.text.strip() for tag in tags for el in root.findall(tag) if el.text}


def _imports(source: str):
    """(module, guarded) for each import in ``source``; guarded = inside try/except ImportError."""
    tree = ast.parse(source)
    guarded_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            names = set()
            for handler in node.handlers:
                types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                names |= {getattr(t, "id", None) for t in types}
            if names & {"ImportError", "ModuleNotFoundError", "Exception", None}:
                for stmt in node.body:
                    guarded_nodes |= {id(n) for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in guarded_nodes
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, id(node) in guarded_nodes
            for alias in node.names:  # `from std_msgs import msg`
                yield f"{node.module}.{alias.name}", id(node) in guarded_nodes


def ros_packages_imported(source: str) -> set:
    """ROS 2 packages a Python source imports: known ROS libraries and any ``<pkg>.msg/srv/action``."""
    found = set()
    for module, _ in _imports(source):
        parts = module.split(".")
        if parts[0] in ROS_PYTHON_PACKAGES:
            found.add(parts[0])
        elif len(parts) > 1 and parts[1] in ("msg", "srv", "action"):
            found.add(parts[0])
    return found


def _python_files(*folders: str):
    for folder in folders:
        top = ROOT / folder
        if top.is_dir():
            yield from (p for p in sorted(top.rglob("*.py")) if "__pycache__" not in p.parts)


def _setup_kwargs(setup_py: Path) -> dict:
    """Run a setup.py with setuptools.setup replaced, and return the keywords it was called with."""
    import setuptools

    captured: dict = {}
    original = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        runpy.run_path(str(setup_py), run_name="__main__")
    finally:
        setuptools.setup = original
    assert captured, f"{setup_py} did not call setup()"
    return captured


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0])


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
    return _setup_kwargs(ROOT / "setup.py")


# ----------------------------------------------------------------------------- package.xml


def test_package_xml_is_format3_ament_python():
    root = _package_xml()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "serl_ctrl"
    assert root.findtext("license") == "Apache-2.0"
    assert root.findtext("export/build_type") == "ament_python"
    assert root.find("maintainer") is not None and root.find("maintainer").get("email")
    assert root.findtext("version") == serl_ctrl.__version__
    tests = _declared(root, "test_depend")
    assert {"ament_copyright", "ament_flake8", "ament_pep257", "python3-pytest"} <= tests


def test_package_xml_declares_the_ros_runtime():
    declared = _declared(_package_xml(), "exec_depend", "depend")
    expected = {
        "rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "trajectory_msgs", "std_srvs",
        "rosgraph_msgs", "lifecycle_msgs", "diagnostic_msgs", "launch", "launch_ros",
        "ament_index_python", "python3-numpy", "python3-yaml",
    }
    assert expected <= declared, f"missing from package.xml: {sorted(expected - declared)}"


def test_ros_import_scanner_finds_interface_packages():
    source = (
        "import rclpy\nfrom rclpy.node import Node\nfrom sensor_msgs.msg import JointState\n"
        "from std_srvs.srv import Trigger\nimport control_msgs.action\nfrom tf2_ros import Buffer\n"
        "import numpy as np\nfrom serl_ctrl.envs import make_env\n"
    )
    assert ros_packages_imported(source) == {
        "rclpy", "sensor_msgs", "std_srvs", "control_msgs", "tf2_ros",
    }


def test_ros_imports_of_the_code_are_declared_in_package_xml():
    declared = _declared(_package_xml(), "exec_depend", "depend")
    missing = {}
    for path in _python_files("serl_ctrl", "launch"):
        for pkg in ros_packages_imported(path.read_text(encoding="utf-8")) - declared:
            missing.setdefault(pkg, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"ROS packages imported but not an <exec_depend> in package.xml: {missing}"


def test_only_the_ros_layer_imports_rclpy():
    """DESIGN.md: learning code never imports rclpy; the ROS layer (serl_ctrl/ros) adapts."""
    offenders = []
    for path in _python_files("serl_ctrl"):
        rel = path.relative_to(PKG_DIR)
        if rel.parts[0] == "ros":
            continue
        if any(m.split(".")[0] == "rclpy" for m, _ in _imports(path.read_text(encoding="utf-8"))):
            offenders.append(str(rel))
    assert not offenders, f"rclpy imported outside serl_ctrl/ros: {offenders}"


# ----------------------------------------------------------------------------- setup.py / setup.cfg


def test_setup_cfg_puts_ros_executables_in_lib_serl_ctrl():
    cfg = configparser.ConfigParser(interpolation=None)
    assert cfg.read(ROOT / "setup.cfg")
    assert cfg.get("develop", "script_dir") == "$base/lib/serl_ctrl"
    assert cfg.get("install", "install_scripts") == "$base/lib/serl_ctrl"


def test_setup_py_metadata(setup_kwargs):
    kw = setup_kwargs
    assert kw["name"] == "serl_ctrl"
    assert kw["version"] == serl_ctrl.__version__
    assert kw["python_requires"] == ">=3.10"
    assert "serl-ctrl = serl_ctrl.cli:main" in kw["entry_points"]["console_scripts"]
    packages = set(kw["packages"])
    assert {"serl_ctrl", "serl_ctrl.utils", "serl_ctrl.envs", "serl_ctrl.ros"} <= packages
    assert not {p for p in packages if p.split(".")[0] in ("tests", "bench")}
    extras = kw["extras_require"]
    assert {"test", "speech", "sb3"} <= set(extras)
    assert {"pytest", "pytest-timeout", "hypothesis"} <= set(extras["test"])
    # torch: never pinned in setup.py (the pin is scripts/constraints.txt), never a CUDA-only name
    torch_reqs = [r for r in kw["install_requires"] if _requirement_name(r) == "torch"]
    assert torch_reqs and "==" not in torch_reqs[0]


def test_setup_py_version_command_matches_package():
    out = subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == serl_ctrl.__version__


def test_setup_py_installs_every_data_file(setup_kwargs):
    data_files = {dest: set(srcs) for dest, srcs in setup_kwargs["data_files"]}
    assert data_files["share/ament_index/resource_index/packages"] == {"resource/serl_ctrl"}
    assert "package.xml" in data_files["share/serl_ctrl"]
    installed = {
        f"{dest}/{Path(src).name}": src for dest, srcs in data_files.items() for src in srcs
    }
    for folder in ("launch", "config", "sim", "policies"):
        top = ROOT / folder
        if not top.is_dir():
            continue
        for path in top.rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts or path.name.startswith("."):
                continue
            if path.suffix in (".pyc", ".pyo"):
                continue
            rel = path.relative_to(ROOT).as_posix()
            assert installed.get(f"share/serl_ctrl/{rel}") == rel, f"{rel} would not be installed"


def test_setup_py_data_files_keep_subfolders_and_skip_empty(tmp_path):
    (tmp_path / "serl_ctrl").mkdir()
    (tmp_path / "serl_ctrl" / "__init__.py").write_text('__version__ = "9.9.9"\n')
    (tmp_path / "setup.py").write_bytes((ROOT / "setup.py").read_bytes())
    (tmp_path / "sim" / "panda" / "meshes").mkdir(parents=True)
    (tmp_path / "sim" / "panda" / "panda.xml").write_text("<mujoco/>")
    (tmp_path / "sim" / "panda" / "meshes" / "link0.stl").write_text("solid")
    (tmp_path / "sim" / "__pycache__").mkdir()
    (tmp_path / "sim" / "__pycache__" / "x.pyc").write_text("")
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "sim.launch.py").write_text("")
    (tmp_path / "config").mkdir()  # empty: no entry, no error
    kw = _setup_kwargs(tmp_path / "setup.py")
    assert kw["version"] == "9.9.9"
    data_files = dict(kw["data_files"])
    assert data_files["share/serl_ctrl/sim/panda"] == ["sim/panda/panda.xml"]
    assert data_files["share/serl_ctrl/sim/panda/meshes"] == ["sim/panda/meshes/link0.stl"]
    assert data_files["share/serl_ctrl/launch"] == ["launch/sim.launch.py"]
    assert not any("config" in d or "__pycache__" in d for d in data_files)
    assert not any(d.endswith("/policies") for d in data_files)


def test_third_party_imports_are_declared(setup_kwargs):
    """Every non-stdlib module serl_ctrl imports comes from a declared pip or ROS dependency."""
    declared = {_requirement_name(r) for r in setup_kwargs["install_requires"]}
    for extra in setup_kwargs["extras_require"].values():
        declared |= {_requirement_name(r) for r in extra}
    ros_declared = _declared(_package_xml(), "exec_depend", "depend")
    dists = importlib.metadata.packages_distributions()
    problems = []
    for path in _python_files("serl_ctrl"):
        for module, guarded in _imports(path.read_text(encoding="utf-8")):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in ("serl_ctrl", "__future__") or guarded:
                continue
            parts = module.split(".")
            if top in ROS_PYTHON_PACKAGES or (len(parts) > 1 and parts[1] in ("msg", "srv", "action")):
                if top not in ros_declared:
                    problems.append(f"{path.relative_to(ROOT)}: ROS package {top} not in package.xml")
                continue
            provided_by = {_norm(d) for d in dists.get(top, [])}
            if not provided_by:
                problems.append(f"{path.relative_to(ROOT)}: imports {top}, which no installed distribution provides")
            elif not provided_by & declared:
                problems.append(
                    f"{path.relative_to(ROOT)}: imports {top} (from {sorted(provided_by)}), "
                    "not in setup.py install_requires/extras"
                )
    assert not problems, "\n".join(sorted(set(problems)))


# ----------------------------------------------------------------------------- scripts


def test_constraints_pin_torch_and_install_sh_uses_them_for_every_pip_call():
    constraints = (ROOT / "scripts" / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0\s*$", constraints, re.M)
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert 'CONSTRAINTS="$ROOT/scripts/constraints.txt"' in install
    code = [
        line.split(" #")[0] for line in install.splitlines()
        if not line.strip().startswith(("#", "log ", "echo ", "die "))  # not messages
    ]
    pip_calls = [
        line for line in code
        if '"${PIP[@]}"' in line or (re.search(r"\bpip install\b", line) and not line.startswith("PIP=("))
    ]
    assert len(pip_calls) >= 2, f"expected the torch and the serl_ctrl pip installs, got {pip_calls}"
    for line in pip_calls:
        assert '-c "$CONSTRAINTS"' in line, f"pip call without the constraints file: {line.strip()}"
    assert "--use-pep517" in install  # keeps console scripts out of setup.cfg's lib/serl_ctrl


def test_ros_test_requirements_cover_package_xml_messages():
    reqs = {
        line.split("[")[0].strip()
        for line in (ROOT / "scripts" / "requirements-ros-test.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    declared = _declared(_package_xml(), "exec_depend")
    for pkg in declared:
        if pkg.endswith("_msgs") or pkg.endswith("_srvs") or pkg == "rclpy":
            assert f"ros-jazzy-{pkg.replace('_', '-')}" in reqs, f"no test wheel for {pkg}"


def test_shell_scripts_parse():
    for script in ("scripts/install.sh", "scripts/test.sh", "scripts/demo.sh", ".ci/run"):
        out = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in ci
    assert "bash scripts/test.sh" in readme
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert commands[-1] == "bash scripts/test.sh"
    assert "bash scripts/demo.sh" in readme


# ----------------------------------------------------------------------------- serl_ctrl.paths


def test_source_root_is_this_checkout():
    assert paths.source_root() == ROOT


@pytest.mark.parametrize("name", paths.DATA_NAMES)
def test_data_dir_finds_checkout_folders(name):
    if (ROOT / name).is_dir():
        assert paths.data_dir(name) == ROOT / name
        return
    # git keeps no empty folder, so a fresh clone may lack it: then it is not "found" in the checkout
    try:
        found = paths.data_dir(name)
    except FileNotFoundError as exc:
        assert str(ROOT / name) in str(exc)
    else:
        assert ROOT not in found.parents


def test_data_dir_rejects_unknown_names():
    with pytest.raises(ValueError, match="sim, policies, launch, config"):
        paths.data_dir("weights")


def test_data_dir_error_lists_every_place(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "source_root", lambda: None)
    monkeypatch.setattr(paths.sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(paths.sys, "base_prefix", str(tmp_path / "base"))
    monkeypatch.setattr(paths.site, "USER_BASE", str(tmp_path / "user"))
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    monkeypatch.delenv(paths.ENV_OVERRIDE, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        paths.data_dir("sim")
    message = str(err.value)
    for place in ("prefix", "base", "user"):
        assert str(tmp_path / place / "share" / "serl_ctrl" / "sim") in message
    assert paths.ENV_OVERRIDE in message


def test_data_dir_from_an_installed_prefix(monkeypatch, tmp_path):
    share = tmp_path / "share" / "serl_ctrl"
    (share / "policies").mkdir(parents=True)
    monkeypatch.setattr(paths, "source_root", lambda: None)
    monkeypatch.setattr(paths.sys, "prefix", str(tmp_path))
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    monkeypatch.delenv(paths.ENV_OVERRIDE, raising=False)
    assert paths.data_dir("policies") == share / "policies"


def test_data_dir_from_the_ament_index(monkeypatch, tmp_path):
    if importlib.util.find_spec("ament_index_python") is None:
        pytest.skip("ament_index_python not installed (scripts/install.sh --test installs it)")
    prefix = tmp_path / "install" / "serl_ctrl"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "serl_ctrl").write_text("")
    (prefix / "share" / "serl_ctrl" / "launch").mkdir(parents=True)
    monkeypatch.setattr(paths, "source_root", lambda: None)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.delenv(paths.ENV_OVERRIDE, raising=False)
    assert paths.data_dir("launch") == prefix / "share" / "serl_ctrl" / "launch"
    assert ("ament index", prefix / "share" / "serl_ctrl") in paths.data_roots()


def test_env_override_comes_first(monkeypatch, tmp_path):
    (tmp_path / "sim").mkdir()
    monkeypatch.setenv(paths.ENV_OVERRIDE, str(tmp_path))
    assert paths.data_dir("sim") == tmp_path / "sim"


def test_find_policy(monkeypatch, tmp_path):
    (tmp_path / "policies" / "pick").mkdir(parents=True)
    shipped = tmp_path / "policies" / "reach_sac.onnx"
    shipped.write_bytes(b"onnx")
    nested = tmp_path / "policies" / "pick" / "pickcube_dp.onnx"
    nested.write_bytes(b"onnx")
    monkeypatch.setenv(paths.ENV_OVERRIDE, str(tmp_path))
    assert paths.find_policy("reach_sac") == shipped.resolve()
    assert paths.find_policy("reach_sac.onnx") == shipped.resolve()
    assert paths.find_policy("pick/pickcube_dp") == nested.resolve()
    own = tmp_path / "elsewhere.onnx"
    own.write_bytes(b"onnx")
    assert paths.find_policy(own) == own.resolve()
    assert paths.find_policy(str(own)) == own.resolve()
    with pytest.raises(FileNotFoundError) as err:
        paths.find_policy("nope")
    assert "pick/pickcube_dp.onnx" in str(err.value) and "reach_sac.onnx" in str(err.value)
