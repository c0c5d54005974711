"""Which torch device a run trains on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

One rule for every trainer (SAC, the imitation policies, the learner node): ``auto`` takes the
first CUDA GPU when torch sees one and the CPU otherwise, as Stable-Baselines3 does. Asking for a
GPU that is not there is an error that says why, never a silent fall back to the CPU: a run that
was meant for a GPU and crawls on the CPU wastes hours. Policies always leave training as CPU
float32 (checkpoints, ONNX export), so where a policy was trained never matters where it runs.
"""

from __future__ import annotations

import re

__all__ = ["DEVICE_HELP", "check_device_name", "resolve_device"]

DEVICE_HELP = "torch device: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: object, field: str = "device") -> str:
    """``name`` if it is a valid device name, else ``ValueError`` naming ``field``."""
    if not isinstance(name, str) or not _PATTERN.match(name):
        raise ValueError(f"{field}={name!r}: must be auto, cpu, cuda or cuda:N")
    return name


def resolve_device(name: str = "auto", field: str = "device"):
    """The ``torch.device`` for ``name``; ``ValueError`` (naming ``field``) when it is not there."""
    import torch

    check_device_name(name, field)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
            raise ValueError(f"{field}={name!r}: torch sees no CUDA GPU ({build}); use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{field}={name!r}: there are {torch.cuda.device_count()} CUDA GPU(s)")
    return dev
