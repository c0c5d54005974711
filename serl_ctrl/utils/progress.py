"""Progress bars that keep stdout clean and CI logs quiet.

    from serl_ctrl.utils.progress import progress

    for step in (bar := progress(range(n_steps), desc="train")):
        ...
        bar.set_postfix(loss=f"{loss:.3f}")

    with progress(total=n_episodes, desc="demos") as bar:
        bar.update(1)

Bars are drawn by tqdm on **stderr** (stdout belongs to a command's results, see serl_ctrl.cli),
and only when stderr is a terminal: piped or in CI they are off, unless ``SERL_CTRL_PROGRESS=1``
(``SERL_CTRL_PROGRESS=0`` turns them off everywhere). A disabled bar still iterates, counts and
accepts ``update``/``set_postfix``/``set_description``/``close``, so callers never branch on it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

ENV_VAR = "SERL_CTRL_PROGRESS"

__all__ = ["Progress", "progress", "progress_enabled"]


def progress_enabled(stream=None) -> bool:
    """Whether bars are drawn: ``SERL_CTRL_PROGRESS`` 1/0 decides, else "is stderr a TTY"."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """A tqdm bar on stderr, or a silent stand-in with the same methods when disabled."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: float | None = None,
        desc: str = "",
        disable: bool = False,
        **tqdm_kwargs: Any,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.n = 0
        self.postfix: dict = {}
        self.enabled = (not disable) and progress_enabled()
        self._bar = None
        if self.enabled:
            from tqdm import tqdm  # lazy: keeps `import serl_ctrl.utils.progress` cheap

            tqdm_kwargs.setdefault("dynamic_ncols", True)
            tqdm_kwargs.setdefault("leave", False)
            self._bar = tqdm(iterable, total=total, desc=desc, file=sys.stderr, **tqdm_kwargs)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress() was given no iterable; use update() instead")
        if self._bar is not None:
            for item in self._bar:
                self.n = self._bar.n
                yield item
            return
        for item in self.iterable:
            self.n += 1
            yield item

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("this progress bar has no total")
        return int(self.total)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None:
        """Show ``key=value`` pairs after the bar (kept in ``.postfix`` when disabled)."""
        self.postfix = dict(kwargs)
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **kwargs)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc, refresh=refresh)

    def write(self, message: str) -> None:
        """Print a line on stderr without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    iterable: Iterable[Any] | None = None,
    total: float | None = None,
    desc: str = "",
    disable: bool = False,
    **tqdm_kwargs: Any,
) -> Progress:
    """A progress bar over ``iterable`` (or driven by ``update``), see the module docstring."""
    return Progress(iterable, total=total, desc=desc, disable=disable, **tqdm_kwargs)
