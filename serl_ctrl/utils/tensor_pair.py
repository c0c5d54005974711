"""A model on disk as a pair: ``NAME.safetensors`` (tensors) + ``NAME.json`` (what they are).

Written tensors first, then the JSON, each atomically, so the JSON is the commit marker; a random
id in both files ties the pair together, so a pair mixed from two saves is refused instead of
loading weights into the wrong description. Nothing is pickled. Used by the imitation policies and
the language planner.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Mapping

from .atomic import atomic_path, atomic_write_text

__all__ = ["pair_paths", "save_pair", "load_pair"]


def pair_paths(path: str | Path, folder_stem: str | None = None) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``; a
    folder means ``folder/folder_stem`` when ``folder_stem`` is given."""
    p = Path(path)
    if folder_stem is not None and p.is_dir():
        p = p / folder_stem
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_pair(st: Path, js: Path, tensors: Mapping[str, Any], desc: Mapping[str, Any], fmt: str,
              **header: str) -> Path:
    """Write the tensors (with ``fmt``, the id and ``header`` in the safetensors header), then
    ``desc`` plus the id as JSON. Returns ``st``."""
    from safetensors.torch import save_file

    st.parent.mkdir(parents=True, exist_ok=True)
    pid = uuid.uuid4().hex
    with atomic_path(st) as tmp:
        save_file(dict(tensors), str(tmp), metadata={"format": fmt, "id": pid, **header})
    atomic_write_text(js, json.dumps({**desc, "id": pid}, indent=1, sort_keys=True) + "\n")
    return st


def load_pair(st: Path, js: Path, fmt: str, version: int, what: str) -> tuple[dict, dict]:
    """``(description, tensors)`` of a pair written by :func:`save_pair`; errors name the file and
    say what is wrong (missing file, bad JSON, another format or version, mixed pair)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    for p in (st, js):
        if not p.is_file():
            raise FileNotFoundError(f"{what} file {p} not found (a {what} is NAME.safetensors + NAME.json)")
    try:
        desc = json.loads(js.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{js}: not valid JSON ({exc})") from None
    if desc.get("format") != fmt or desc.get("version") != version:
        raise ValueError(f"{js}: not a serl_ctrl {what} of version {version} "
                         f"(format={desc.get('format')!r}, version={desc.get('version')!r})")
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("id") != desc.get("id"):
        raise ValueError(f"{st} and {js} do not belong together (ids {meta.get('id')} vs {desc.get('id')}): "
                         "one of them was overwritten by another save")
    return desc, load_file(str(st))
