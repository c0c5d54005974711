"""``serl-ctrl correct``: turn a spoken (WAV) or typed correction into a robot command.

Unrecognised speech gives ``"command": null`` and changes nothing; "stop" always wins. The text
is only ever parsed against the vocabulary, never executed.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", help="a WAV file with one utterance (any rate and channels)")
    source.add_argument("--text", help="a typed correction, e.g. 'move a bit to the left'")


def run(args: argparse.Namespace) -> dict:
    from ..language.correct import correct_text, correct_wav

    return correct_wav(args.wav) if args.wav else correct_text(args.text)
