"""Feeds and their batch metadata (thesis §4.2).

A :class:`Feed` is the unit flowing between stages. Its metadata is a stack of
``(batch_id, arity)`` rows (outermost first); gates read only the innermost
row. The arity of a row is ``None`` while it is *open*: the feeds of a
streaming batch enter before its source has ended (see
:class:`~persona.ptf.pipeline.StreamingBatch`); the pipeline declares the arity
at every gate when the source ends (:meth:`~persona.ptf.gate.Gate.declare`).

Beside the metadata each feed carries ``pos``, a parallel stack of its
position inside the batch at each level, which makes the feed -> result mapping
explicit: results leave the egress gate ordered by position, and an aggregate
of size S at position k holds exactly the feeds at positions kS .. kS+S-1.

Stages never see or change ``meta`` or ``pos``; the runtime swaps ``payload``
in place, so a feed crossing a plain stage costs no allocation.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

MetaRow = tuple[int, int | None]
"""One metadata row: ``(batch_id, arity)``; arity ``None``: not declared yet (streaming)."""

# One counter for the whole process: batch ids and partition ids never collide,
# so a gate can key any level's batches in the same table.
_ids = itertools.count(1)


def new_batch_id() -> int:
    """A process-unique batch (or partition) id; thread-safe (``next`` on a count is atomic)."""
    return next(_ids)


class Feed:
    """One feed: metadata stack, position stack and the payload stages transform.

    ``meta[-1]`` is the innermost ``(batch_id, arity)`` row, ``pos[-1]`` the
    feed's position in that batch (``0 <= pos[-1] < arity``). ``meta[0][0]`` is
    the root id: the id of the batch a user submitted, used for cancellation.
    """

    __slots__ = ("meta", "pos", "payload")

    def __init__(self, meta: tuple[MetaRow, ...], pos: tuple[int, ...], payload: Any) -> None:
        self.meta = meta
        self.pos = pos
        self.payload = payload

    @property
    def batch_id(self) -> int:
        """Id of the innermost batch (what gates account)."""
        return self.meta[-1][0]

    @property
    def arity(self) -> int | None:
        """Arity of the innermost batch (None while a streaming batch is open)."""
        return self.meta[-1][1]

    @property
    def root(self) -> int:
        """Id of the user's batch this feed belongs to."""
        return self.meta[0][0]

    def __repr__(self) -> str:
        return f"Feed(meta={self.meta}, pos={self.pos})"


def aggregate_arity(arity: int | None, size: int) -> int | None:
    """Arity after an aggregate dequeue of ``size``: ``ceil(arity / size)`` (None if open)."""
    return None if arity is None else -(-arity // size)


def group_size(arity: int | None, size: int, group: int) -> int:
    """Number of feeds in aggregate group ``group``; the last group may be short. While the
    arity is open every group is taken to be full."""
    return size if arity is None else min(size, arity - group * size)


@dataclass(frozen=True, slots=True)
class Partition:
    """A group of feeds of one batch handed to a local pipeline (thesis §4.5.2).

    ``meta``/``pos`` are the *outer* metadata of the group after the aggregate
    (arity ``ceil(A/P)``, position ``k``); ``payloads`` the member payloads in
    position order. This is the value a global gate ships to a remote worker;
    a local pipeline's first gate pushes a ``(partition_id, len(payloads))``
    row onto ``meta`` and its last gate pops it again.
    """

    meta: tuple[MetaRow, ...]
    pos: tuple[int, ...]
    payloads: tuple[Any, ...]

    @property
    def root(self) -> int:
        return self.meta[0][0]

    def result(self, results: list[Any]) -> Feed:
        """The outer feed carrying this partition's ordered results (what a worker
        sends back to the next global gate)."""
        return Feed(self.meta, self.pos, results)


def push_partition(part: Partition, partition_id: int) -> list[Feed]:
    """Split a partition into member feeds carrying an extra innermost metadata row."""
    n = len(part.payloads)
    meta = part.meta + ((partition_id, n),)
    return [Feed(meta, part.pos + (i,), p) for i, p in enumerate(part.payloads)]


def pop_partition(meta: tuple[MetaRow, ...], pos: tuple[int, ...], results: list[Any]) -> Feed:
    """The outer feed for a finished partition: innermost row popped, payload = ordered results."""
    return Feed(meta[:-1], pos[:-1], results)
