"""Atomic file writes: a reader sees either the old file or the complete new one, never a half.

Why: episodes, checkpoints, exported policies and videos are written by long-running
processes that can be killed (Ctrl-C, OOM, a robot e-stop that takes the PC down). Writing
straight to the final name would leave a truncated file that looks valid by name and fails
much later, far from its cause. So every writer here goes through the same three steps:

1. write to a hidden temporary file in the *same folder* (``.<name>.<random>.tmp<suffix>``;
   same folder so that the final rename never crosses a file system, and it keeps the
   suffix so that tools choosing a format by extension, such as ffmpeg, still work);
2. flush and ``fsync`` it, so its bytes are on disk before its name is;
3. ``os.replace`` it onto the final name (atomic on POSIX and Windows) and ``fsync`` the
   folder, so that the rename itself survives a power cut.

If the body raises (including ``KeyboardInterrupt``), the temporary file is removed and
the final name is untouched: an existing file there keeps its old contents. If the
process dies outright, a hidden ``.*.tmp*`` file may be left behind; it never carries the
final name, and the episode listing in :mod:`serl_ctrl.data.episodes` ignores hidden files
for that reason.

The temporary file is created with mode ``0o666`` filtered by the process umask, so the
final file gets the same permissions as a plain ``open(path, "w")`` would give it
(``tempfile.mkstemp`` would make it ``0o600``).

Example (a checkpoint)::

    with atomic_write("ckpt/step_1000.pt") as f:
        torch.save(state_dict, f)
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import IO, Iterator, Union

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_text",
    "fsync_dir",
]

PathLike = Union[str, "os.PathLike[str]"]


def fsync_dir(directory: PathLike) -> None:
    """Flush a folder's entries to disk, so that a rename into it survives a power cut.

    Windows cannot open a folder as a file, and NTFS journals renames itself, so there
    this is a no-op by design. Some file systems (certain network and FUSE mounts) refuse
    to fsync a folder with EINVAL / ENOTSUP: the rename has already happened and there is
    nothing more we can do, so that refusal is not an error.
    """
    if os.name == "nt":
        return
    fd = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _check_target(path: PathLike) -> Path:
    """Resolve the target and fail early, naming it, when it cannot be written."""
    final = Path(os.fspath(path))
    if final.name in ("", ".", ".."):
        raise ValueError(f"cannot write to {str(path)!r}: it does not name a file")
    parent = final.parent
    if not parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {final}: folder {parent} does not exist (create it first)"
        )
    if final.is_dir():
        raise IsADirectoryError(f"cannot write {final}: it is a folder")
    return final


def _reserve_temp(final: Path) -> tuple[Path, int]:
    """Create an empty, exclusively owned temporary file next to ``final``.

    ``O_EXCL`` guarantees that two writers (threads, processes) never share a temporary
    file even if they target the same final name; the last ``os.replace`` wins whole.
    """
    for _ in range(100):
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp{final.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return tmp, fd
    raise FileExistsError(f"could not create a unique temporary file next to {final}")


def _remove_quietly(tmp: Path) -> None:
    """Remove a temporary file on the failure path; the original error is what matters."""
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def _commit(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; on clean exit it atomically becomes ``path``.

    ``mode`` must be ``"wb"`` or ``"w"`` (text, ``encoding`` defaults to UTF-8, not the
    locale, so that files are the same on every machine). The yielded object is a normal
    file object: pass it to ``np.savez_compressed``, ``torch.save``, ``json.dump`` ...

    Raises ``FileNotFoundError`` when the folder is missing (folders are not created
    implicitly: a typo in a path should not silently create a tree).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    final = _check_target(path)
    tmp, fd = _reserve_temp(final)
    try:
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary *path* (same folder, same suffix) for writers that need a file name.

    For tools that open the file themselves (ffmpeg, Pillow, ONNX's ``save``): they write
    to the yielded path; on clean exit it is fsynced and renamed onto ``path``. The file
    exists (empty) when the block starts, so writers must be happy to overwrite it.
    """
    final = _check_target(path)
    tmp, fd = _reserve_temp(final)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; newlines are written exactly as given."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_csv(path: PathLike, rows: "list[dict]", first: "tuple[str, ...]" = ()) -> None:
    """Write ``rows`` (dicts) as CSV, atomically: the ``first`` columns in that order, then every
    other key sorted. A fixed order matters to anyone reading two files of one kind side by side,
    and rows restored from a checkpoint come back with their keys sorted."""
    import csv

    keys = list(first) + sorted({k for r in rows for k in r} - set(first))
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
