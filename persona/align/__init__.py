"""Alignment (thesis §5.4–5.5): aligner backends behind one interface, the shared executor, references.

- :mod:`~persona.align.base`: :class:`Aligner`, :class:`AlignerOptions`, :class:`AlignResult`, backends.
- :mod:`~persona.align.minimap2`: the ``minimap2`` backend (native kernel :mod:`persona._native.mm2`,
  GIL released); :mod:`~persona.align.mappy_backend`: the ``mappy`` backend (same minimap2 via mappy).
- :mod:`~persona.align.pairing`: SAM flags, mate fields, TLEN, proper pairs.
- :mod:`~persona.align.executor`: one aligner thread pool per process, work items, in-order gather.
- :mod:`~persona.align.reference` / :mod:`~persona.align.fasta`: reference store, index cache, FASTA checks.

Backends are imported lazily: importing this package loads neither the kernel nor mappy.
"""
from persona.align.base import (
    Aligner,
    AlignerOptions,
    AlignResult,
    make_aligner,
)
from persona.align.executor import (
    DEFAULT_WORK_ITEM_READS,
    AlignerExecutor,
    shared_executor,
)
from persona.align.fasta import read_contig_table
from persona.align.reference import (
    LoadedReference,
    ReferenceInfo,
    acquire_reference,
    add_reference,
    list_references,
    reference_info,
    release_reference,
    use_reference,
)

__all__ = [
    "DEFAULT_WORK_ITEM_READS",
    "AlignResult",
    "Aligner",
    "AlignerExecutor",
    "AlignerOptions",
    "LoadedReference",
    "ReferenceInfo",
    "acquire_reference",
    "add_reference",
    "list_references",
    "make_aligner",
    "read_contig_table",
    "reference_info",
    "release_reference",
    "shared_executor",
    "use_reference",
]
