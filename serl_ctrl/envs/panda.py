"""Facts about the Franka Panda that both simulators share.

The robot description is the Panda URDF that ships inside the ``pybullet_data`` package (with its
meshes), so nothing is copied into this repository: PyBullet loads it as is, MuJoCo loads it once
the ``package://`` paths are resolved (see :mod:`serl_ctrl.envs.mujoco_backend`).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
JOINT_NAMES = ARM_JOINTS + FINGER_JOINTS
HAND_LINK = "panda_hand"
TCP_LINK = "panda_grasptarget"  # 10.5 cm beyond the hand flange: between the finger tips
MAX_FINGER_WIDTH = 0.08  # m, both fingers fully open

# Joint configuration with the TCP at (0.5, 0, 0.25) pointing down, fingers opening along world y.
# Solved once with damped least squares on this model (see tests/test_envs.py::test_home_pose).
HOME_Q = np.array([0.0, -0.0442, 0.0, -2.3326, 0.0, 2.2884, 0.7854])
HOME_TCP = np.array([0.5, 0.0, 0.25])


def panda_urdf_path() -> Path:
    """Path of pybullet_data's franka_panda/panda.urdf, with a clear error if it is missing."""
    try:
        import pybullet_data
    except ImportError as exc:  # pragma: no cover - pybullet is a hard dependency
        raise ImportError(
            "serl_ctrl needs the Panda description from the 'pybullet' package (pybullet_data): "
            "pip install pybullet"
        ) from exc
    path = Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"
    if not path.is_file():
        raise FileNotFoundError(f"Panda URDF not found at {path}: reinstall pybullet")
    return path


@functools.lru_cache(maxsize=1)
def panda_urdf_for_sim() -> Path:
    """The Panda URDF with absolute mesh paths and the collision meshes as visual meshes.

    Written once per process to a temporary folder (removed at exit); the meshes stay in
    pybullet_data. The visual meshes are 1-2 MB each: with them PyBullet's renderer drew a
    128 px frame 4x slower (12 vs 46 fps here) for no benefit at policy resolution, and MuJoCo
    loads the same file. Both simulators therefore see and collide with the same geometry.
    """
    urdf = panda_urdf_path()
    meshes = urdf.parent / "meshes"
    text = urdf.read_text()
    text = text.replace("package://meshes/visual/", f"{meshes}/collision/")
    text = text.replace("package://meshes/", f"{meshes}/")
    folder = Path(tempfile.mkdtemp(prefix="serl_ctrl_panda_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "panda.urdf"
    path.write_text(text)
    return path
