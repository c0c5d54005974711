"""Instruction embeddings as one more observation: what a language-conditioned policy reads.

The contract with the exported policies and the runtime (``serl_ctrl.runtime.spec``): the
instruction travels as the float32 observation key ``instruction_embedding`` (:data:`INSTRUCTION_KEY`)
holding the MiniLM sentence embedding of the canonical instruction string (384 floats, unit norm,
:meth:`serl_ctrl.language.embedding.InstructionEncoder.embed`).

Recorded episodes label every step with the expert's instruction (``episode.instructions[t]``
belongs to step ``t``, i.e. to ``obs[t]`` and ``action[t]``). :func:`with_instruction_embeddings`
turns those labels into the observation key: ``obs[t]`` gets the embedding of ``instructions[t]``
and the final observation ``obs[T]`` repeats the last label, so a training window (observation
history ending at ``t``, action chunk starting at ``t``) sees the instruction that was being
followed when ``action[t]`` was taken.

MiniLM puts "open the gripper" and "close the gripper" at cosine 0.91. The policies normalise
every state observation per dimension (mean/std fitted on the demonstrations), which stretches the
few dimensions on which instructions differ; ``tests/test_hierarchy.py`` checks that a policy still
tells the two apart.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["INSTRUCTION_KEY", "INSTRUCTION_DIM", "InstructionTable", "with_instruction_embeddings",
           "episode_instructions"]

#: The observation key of the instruction (the same string as ``serl_ctrl.runtime.spec.INSTRUCTION_KEY``).
INSTRUCTION_KEY = "instruction_embedding"
#: Its size: one MiniLM sentence embedding.
INSTRUCTION_DIM = 384


class InstructionTable:
    """Canonical instruction -> float32 MiniLM embedding, computed once per string.

    ``encoder`` is an :class:`~serl_ctrl.language.embedding.InstructionEncoder` (default: the
    process-wide one, built on first use). Strings that are not canonical instructions are
    refused with ``ValueError`` (a policy is never conditioned on free text).
    """

    def __init__(self, encoder: Any = None) -> None:
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    @property
    def encoder(self):
        if self._encoder is None:
            from .embedding import default_encoder

            self._encoder = default_encoder()
        return self._encoder

    def __call__(self, instruction: str) -> np.ndarray:
        e = self._cache.get(instruction)
        if e is None:
            from .vocabulary import instruction_id

            instruction_id(instruction)  # ValueError for anything but a canonical instruction
            e = np.asarray(self.encoder.embed(instruction), dtype=np.float32).reshape(INSTRUCTION_DIM)
            self._cache[instruction] = e
        return e.copy()  # callers may write into it; the cache stays intact

    def many(self, instructions: Sequence[str]) -> np.ndarray:
        """``(n, 384)`` embeddings of ``instructions``."""
        if not len(instructions):
            return np.zeros((0, INSTRUCTION_DIM), np.float32)
        return np.stack([self(s) for s in instructions])


def with_instruction_embeddings(episodes: Iterable[Any], table: InstructionTable | None = None) -> list[Any]:
    """Copies of ``episodes`` with the ``instruction_embedding`` observation from their labels.

    Every step must be labelled with a canonical instruction (``ValueError`` naming the episode
    and step otherwise). The input episodes are not modified.
    """
    table = table or InstructionTable()
    out = []
    for i, ep in enumerate(episodes):
        labels = list(ep.instructions)
        if ep.length == 0:
            continue
        for t, s in enumerate(labels):
            if not s:
                raise ValueError(f"episode {i} step {t} has no instruction label: a language-conditioned policy "
                                 "needs every step labelled (record with `serl-ctrl demos`)")
        try:
            emb = table.many(labels + [labels[-1]])
        except ValueError as exc:
            raise ValueError(f"episode {i}: {exc}") from None
        obs = dict(ep.observations)
        obs[INSTRUCTION_KEY] = emb
        out.append(replace(ep, observations=obs))
    return out


def episode_instructions(episodes: Iterable[Any]) -> list[str]:
    """The distinct instruction labels of ``episodes``, in order of first appearance."""
    seen: dict[str, None] = {}
    for ep in episodes:
        for s in ep.instructions:
            if s:
                seen.setdefault(s, None)
    return list(seen)
