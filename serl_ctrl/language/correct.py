"""Spoken (or typed) corrections to JSON-able dicts: what ``serl-ctrl correct`` prints.

>>> correct_text("a little higher please")["command"]["instruction"]
'a little higher'

``correct_wav(path)`` returns::

    {"text": "move a bit to the left",           # words recognised ("" if none)
     "command": {"kind": "translate",             # parsed correction, or None
                 "instruction": "move a bit to the left",
                 "parameters": {"direction": [0.0, 1.0, 0.0], "magnitude_m": 0.02}},
     "confidence": 0.93,                          # see serl_ctrl.language.speech
     "latency_ms": 21.4}                          # end of utterance -> result

``python -m serl_ctrl.language.correct --wav FILE [--json]`` runs it from a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any, Sequence

from serl_ctrl.language.vocabulary import parse

__all__ = ["correct_wav", "correct_text", "main"]

_RECOGNIZER = None
_LOCK = threading.Lock()


def _recognizer():
    global _RECOGNIZER
    with _LOCK:
        if _RECOGNIZER is None:
            from serl_ctrl.language.speech import Recognizer

            _RECOGNIZER = Recognizer()
        return _RECOGNIZER


def correct_wav(path: str | os.PathLike, recognizer: Any = None) -> dict[str, Any]:
    """Recognise a spoken correction in a WAV file (any rate/channels).

    Uses a process-wide :class:`~serl_ctrl.language.speech.Recognizer` unless one is given.
    Raises ``FileNotFoundError`` for a missing file and ``ImportError`` (saying what to
    install) when pocketsphinx is missing.
    """
    rec = recognizer if recognizer is not None else _recognizer()
    r = rec.recognize_file(path)
    return {
        "text": r.text,
        "command": r.command.to_dict() if r.command is not None else None,
        "confidence": round(float(r.confidence), 4),
        "latency_ms": round(float(r.latency_ms), 2),
    }


def correct_text(text: str) -> dict[str, Any]:
    """The same dict for a typed correction (confidence 1 when understood, else 0)."""
    t0 = time.perf_counter()
    cmd = parse(text)
    return {
        "text": text,
        "command": cmd.to_dict() if cmd is not None else None,
        "confidence": 1.0 if cmd is not None else 0.0,
        "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serl_ctrl.language.correct",
                                description="Recognise a spoken correction (offline).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", help="WAV file with one spoken correction (any rate/channels)")
    src.add_argument("--text", help="a typed correction instead of audio")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    try:
        out = correct_wav(a.wav) if a.wav else correct_text(a.text)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(out))
    else:
        cmd = out["command"]
        what = f"{cmd['kind']}: {cmd['instruction']} {cmd['parameters'] or ''}".rstrip() if cmd else "not understood (no change)"
        print(f"heard {out['text']!r} (confidence {out['confidence']:.2f}, {out['latency_ms']:.1f} ms) -> {what}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
