"""The one interface every aligner backend implements (thesis §5.4).

An :class:`Aligner` turns a block of reads (one work item: a slice of an AGD
chunk's decoded ``base`` and ``qual`` columns) into :class:`AlignResult`: one
primary :class:`~persona.agd.records.Alignments` record per read, in input
order, plus ``options.secondary`` secondary columns.

Contracts every backend keeps:

- **Pure per read.** The records of a read (or of a pair) depend only on the
  index, the options, the read's bases (and name, when given) — never on the
  other reads of the block, the thread, or the block boundaries. This is what
  makes the ``results`` column byte-identical whatever the number of threads,
  stage replicas, work-item size or concurrent requests.
- **Paired input is interleaved**: record ``2i`` is read 1, ``2i+1`` is read 2
  of pair ``i``; a block given to :meth:`Aligner.align_paired` has an even
  number of reads.
- **Never crash on odd reads.** Reads too short to seed, empty reads or reads
  of only ``N`` come back unmapped (flag 0x4, ``ref_index`` -1, empty CIGAR).
- **Extra columns** (``AlignResult.secondary``, stored as ``secondary<N>``)
  hold one row per read too: every supplementary alignment of the read plus
  at most ``options.secondary`` secondary ones. There are at least
  ``options.secondary`` of them, more when a read has more extra records (so
  supplementary alignments are kept even when ``options.secondary`` is 0; the
  count may differ between blocks: :meth:`AlignResult.concat` pads). A read
  with fewer gets *absent* rows (``Alignments.present`` false; fields
  :data:`~persona.agd.records.ABSENT_ROW`), stored as zero-length records;
  exporters skip them.
- **Tags**: a backend that knows them fills ``Alignments.tags`` (each record's
  optional SAM fields as BAM aux bytes: NM, MD, AS, SA, MC, MQ, ...) on the
  primary and every extra column; ``Aligner.makes_tags`` says whether it does.
- Positions are 0-based; ``ref_index`` indexes the reference's contig table
  (the manifest's ``reference_contigs``). CIGARs include soft clips (``S``),
  so the read's full sequence always goes into SEQ.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from persona.agd.manifest import Contig
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments
from persona.errors import AlignerError

#: Aligner backends: name -> module. A backend module provides ``INDEX_SUFFIX``,
#: ``build_index(fasta, out_path, preset)``, ``load_index(path, options) -> index``
#: and ``ALIGNER`` (the :class:`Aligner` subclass, constructed as ``ALIGNER(index, contigs, options)``),
#: and optionally ``INDEX_FAMILY``: backends of one family read the same stored index file.
#: Modules are imported lazily, so a backend's dependencies load only when used.
#: ``minimap2`` is the native kernel (GIL released); ``mappy`` the same minimap2 through mappy;
#: ``minibwa`` BWA-MEM-class alignment through the minibwa package (optional extra);
#: ``snap`` our SNAP-style seed-and-extend aligner (native kernel, GIL released).
BACKENDS: dict[str, str] = {"minimap2": "persona.align.minimap2", "mappy": "persona.align.mappy_backend",
                            "minibwa": "persona.align.minibwa_backend", "snap": "persona.align.snap_backend"}
KNOWN_ALIGNERS = tuple(BACKENDS)


@dataclass(frozen=True)
class AlignerOptions:
    """Options common to every backend plus backend options passed through.

    ``preset`` names the backend's parameter preset (minimap2: ``sr`` for short
    reads). ``secondary`` is how many secondary alignments per read to keep (0:
    none); supplementary alignments are always kept (see the module docstring).
    ``use_names`` passes read names to the backend, which minimap2 hashes to break
    ties between equally good hits exactly as the minimap2 binary does.
    ``extra`` holds backend keyword options (minimap2: mappy.Aligner keywords
    such as ``k``, ``w``, ``min_cnt``, ``bw``, ``best_n``, ``max_frag_len``,
    ``extra_flags``, ``scoring``); unknown keys are rejected by the backend.
    """

    preset: str = "sr"
    secondary: int = 0
    use_names: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.secondary, int) or self.secondary < 0:
            raise AlignerError(f"secondary must be an integer >= 0, got {self.secondary!r}")
        if not isinstance(self.preset, str) or not self.preset:
            raise AlignerError(f"preset must be a non-empty string, got {self.preset!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "secondary": self.secondary, "use_names": self.use_names,
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> AlignerOptions:
        unknown = set(obj) - {"preset", "secondary", "use_names", "extra"}
        if unknown:
            raise AlignerError(f"unknown aligner option(s): {', '.join(sorted(unknown))}")
        return cls(**obj)


@dataclass
class AlignResult:
    """Alignments of one block: ``primary`` (one per read) and ``secondary[i]`` (one per read each)."""

    primary: Alignments
    secondary: list[Alignments] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.primary)

    @classmethod
    def concat(cls, parts: Sequence[AlignResult]) -> AlignResult:
        """Results of consecutive blocks joined in order (the executor's gather step)."""
        import numpy as np

        if not parts:
            raise ValueError("nothing to concatenate")

        n_sec = max(len(p.secondary) for p in parts)
        with_tags = parts[0].primary.tags is not None

        def column(p: AlignResult, i: int) -> Alignments:
            if i < len(p.secondary):
                return p.secondary[i]
            pad = Alignments.absent(len(p.primary))
            if with_tags:
                pad.tags = RaggedArray(np.zeros(len(p.primary) + 1, np.uint64), np.zeros(0, np.uint8),
                                       validate=False)
            return pad

        def cat(items: Sequence[Alignments]) -> Alignments:
            tags = None
            if all(a.tags is not None for a in items):
                tags = RaggedArray.concat([a.tags for a in items])  # type: ignore[misc]
            return Alignments(np.concatenate([a.fields for a in items]),
                              RaggedArray.concat([a.cigars for a in items]),
                              np.concatenate([a.present for a in items]), tags)

        if len(parts) == 1 and all(len(p.secondary) == n_sec for p in parts):
            return parts[0]
        return cls(cat([p.primary for p in parts]),
                   [cat([column(p, i) for p in parts]) for i in range(n_sec)])


class Aligner(ABC):
    """A loaded aligner: an index plus options. Thread-safe: one object serves every thread.

    Subclasses implement :meth:`align_single` and :meth:`align_paired`; both may
    be called concurrently from the executor's threads.
    """

    #: backend name as used on the command line and in the reference store
    name: str = ""
    #: whether the backend reads base qualities (minimap2 does not: the align app then skips the column)
    uses_quals: bool = True
    #: whether the backend fills ``Alignments.tags`` (then the align app writes the tag columns)
    makes_tags: bool = False

    def __init__(self, contigs: Sequence[Contig], options: AlignerOptions) -> None:
        self.contigs = list(contigs)
        self.options = options

    @abstractmethod
    def align_single(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        """Align single-end reads. ``bases`` holds text bases (A,C,G,T,N), one record per read."""

    @abstractmethod
    def align_paired(self, bases: RaggedArray, quals: RaggedArray | None = None,
                     names: RaggedArray | None = None) -> AlignResult:
        """Align interleaved pairs (records 2i, 2i+1); ``len(bases)`` must be even."""

    def with_options(self, options: AlignerOptions) -> Aligner:
        """An aligner sharing this one's loaded index but using other per-request ``options``.

        Only options that do not change how the index was loaded may differ
        (``secondary``, ``use_names``); backends raise AlignerError otherwise.
        """
        raise AlignerError(f"aligner {self.name!r} cannot change options after loading")

    def align(self, bases: RaggedArray, quals: RaggedArray | None = None,
              names: RaggedArray | None = None, *, paired: bool = False) -> AlignResult:
        """:meth:`align_paired` or :meth:`align_single`, after checking the block's shape."""
        n = len(bases)
        if quals is not None and len(quals) != n:
            raise AlignerError(f"{n} base records but {len(quals)} quality records")
        if names is not None and len(names) != n:
            raise AlignerError(f"{n} base records but {len(names)} name records")
        if paired:
            if n % 2:
                raise AlignerError(f"paired block has an odd number of reads ({n})")
            return self.align_paired(bases, quals, names)
        return self.align_single(bases, quals, names)


def backend_module(name: str) -> Any:
    """The backend module of aligner ``name`` (see :data:`BACKENDS`)."""
    import importlib

    try:
        return importlib.import_module(BACKENDS[name])
    except KeyError:
        raise AlignerError(f"unknown aligner {name!r}; known: {', '.join(BACKENDS)}") from None


def make_aligner(name: str, index: Any, contigs: Sequence[Contig], options: AlignerOptions) -> Aligner:
    """The backend ``name`` over an already-loaded index object (see :mod:`persona.align.reference`)."""
    return backend_module(name).ALIGNER(index, contigs, options)  # type: ignore[no-any-return]
