"""Where the data folders (sim, policies, launch, config) are, in a checkout or an install.

The same code runs from three places, and each keeps the folders somewhere else:

1. a source checkout (``pip install -e .``, or running from the repo): the repository root, i.e.
   the parent of this package's folder, recognised by its ``package.xml``;
2. a ROS 2 install (colcon): ``share/serl_ctrl/<name>`` found through ament_index_python
   (``get_package_share_directory``, which reads ``AMENT_PREFIX_PATH``);
3. a pip install (wheel): ``share/serl_ctrl/<name>`` under ``sys.prefix`` (setup.py's data_files),
   or under the user base for ``pip install --user``.

``SERL_CTRL_SHARE_DIR`` (a folder holding ``sim/``, ``policies/`` ...) overrides all of them.

    >>> from serl_ctrl.paths import data_dir, find_policy
    >>> data_dir("sim")                      # doctest: +SKIP
    PosixPath('<checkout>/sim')
    >>> find_policy("pickcube_sac")          # policies/pickcube_sac.onnx  # doctest: +SKIP
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path
from typing import Union

PACKAGE = "serl_ctrl"
DATA_NAMES = ("sim", "policies", "launch", "config")
ENV_OVERRIDE = "SERL_CTRL_SHARE_DIR"

__all__ = ["DATA_NAMES", "data_dir", "data_roots", "find_policy", "source_root"]

PathLike = Union[str, "os.PathLike[str]"]


def source_root() -> Path | None:
    """The repository root when serl_ctrl runs from a source checkout, else None."""
    root = Path(__file__).resolve().parent.parent
    if (root / "package.xml").is_file() and (root / PACKAGE / "__init__.py").is_file():
        return root
    return None


def _ament_share() -> tuple[Path | None, str]:
    """share/serl_ctrl from the ament index, with a note saying why not when it is not found."""
    try:
        from ament_index_python.packages import (  # type: ignore[import-not-found]
            PackageNotFoundError,
            get_package_share_directory,
        )
    except ImportError:
        return None, "ament_index_python is not importable"
    try:
        return Path(get_package_share_directory(PACKAGE)), ""
    except PackageNotFoundError:
        return None, f"{PACKAGE} is not in the ament index (AMENT_PREFIX_PATH)"
    except (OSError, ValueError) as exc:  # AMENT_PREFIX_PATH unset, malformed index ...
        return None, str(exc)


def data_roots() -> list[tuple[str, Path]]:
    """Every place searched for data folders, best first, as ``(label, folder)`` pairs.

    A folder named here may not exist; ``data_dir`` takes the first root that has the folder.
    """
    roots: list[tuple[str, Path]] = []
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        roots.append((f"${ENV_OVERRIDE}", Path(override).expanduser()))
    src = source_root()
    if src is not None:
        roots.append(("source checkout", src))
    share, _ = _ament_share()
    if share is not None:
        roots.append(("ament index", share))
    prefixes = [sys.prefix, sys.base_prefix]
    user_base = getattr(site, "USER_BASE", None)
    if user_base:
        prefixes.append(user_base)
    for prefix in prefixes:
        candidate = Path(prefix) / "share" / PACKAGE
        if all(candidate != p for _, p in roots):
            roots.append((f"installed under {prefix}", candidate))
    return roots


def data_dir(name: str) -> Path:
    """The folder ``name`` (one of sim, policies, launch, config), from a checkout or an install.

    Raises:
        ValueError: ``name`` is not one of the data folders.
        FileNotFoundError: no searched place has the folder; the message lists every place looked.
    """
    if name not in DATA_NAMES:
        raise ValueError(f"unknown data folder {name!r}; expected one of: {', '.join(DATA_NAMES)}")
    looked = []
    for label, root in data_roots():
        candidate = root / name
        if candidate.is_dir():
            return candidate
        looked.append(f"{candidate} ({label})")
    _, why_not_ament = _ament_share()
    if why_not_ament:
        looked.append(f"ament index: {why_not_ament}")
    raise FileNotFoundError(
        f"serl_ctrl data folder {name!r} not found. Looked in: " + "; ".join(looked)
        + f". Install the package (pip install -e . / colcon build) or set {ENV_OVERRIDE}."
    )


def find_policy(name_or_path: PathLike) -> Path:
    """A policy file: an existing path as given, or a policy shipped in ``policies/``.

    A shipped policy can be named with or without ``.onnx`` (``"pickcube_sac"`` or
    ``"pickcube_sac.onnx"``), and may sit in a sub-folder (``"pick/pickcube_sac"``).

    Raises:
        FileNotFoundError: neither a file at that path nor a shipped policy of that name; the
            message lists the shipped policies.
    """
    given = Path(os.fspath(name_or_path)).expanduser()
    if given.is_file():
        return given.resolve()
    looked = [str(given)]
    try:
        policies = data_dir("policies")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"policy {str(name_or_path)!r} not found: no such file, and {exc}") from None
    if not given.is_absolute():
        stem = given.as_posix()
        names = [stem] if stem.endswith(".onnx") else [stem + ".onnx", stem]
        for candidate_name in names:
            candidate = policies / candidate_name
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate.resolve()
    shipped = sorted(p.relative_to(policies).as_posix() for p in policies.rglob("*.onnx"))
    raise FileNotFoundError(
        f"policy {str(name_or_path)!r} not found. Looked at: {', '.join(looked)}. "
        f"Shipped policies: {', '.join(shipped) if shipped else 'none'}."
    )
