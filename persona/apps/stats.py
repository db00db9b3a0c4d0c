"""Alignment summary of a dataset (``persona stats``), counted like ``samtools flagstat``.

AGD's ``results`` column holds one primary record per read, so the counts here
equal flagstat's "primary" lines of the exported BAM; ``secondary`` and
``supplementary`` count the alignments present in the ``secondary<N>`` columns
(flagstat's lines of those names). The counting is
vectorised over each chunk's decoded records; memory is one chunk at a time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persona.agd import Dataset
from persona.agd.columns import is_secondary_column
from persona.agd.records import (
    FLAG_DUPLICATE,
    FLAG_MATE_UNMAPPED,
    FLAG_PAIRED,
    FLAG_PROPER_PAIR,
    FLAG_QCFAIL,
    FLAG_READ1,
    FLAG_READ2,
    FLAG_SECONDARY,
    FLAG_SUPPLEMENTARY,
    FLAG_UNMAPPED,
)
from persona.apps.job import DatasetReadJob, Request, StagePlan, Summary, Work
from persona.errors import DatasetError

if TYPE_CHECKING:
    from persona.runtime import Runtime


@dataclass
class AlignmentStats:
    total: int = 0
    qc_failed: int = 0
    secondary: int = 0
    supplementary: int = 0
    duplicates: int = 0
    mapped: int = 0
    paired: int = 0
    read1: int = 0
    read2: int = 0
    properly_paired: int = 0
    both_mapped: int = 0
    singletons: int = 0
    mate_other_contig: int = 0
    mate_other_contig_mapq5: int = 0

    def to_dict(self) -> dict[str, float]:
        d: dict[str, float] = dict(asdict(self))
        d["mapped_pct"] = self.pct(self.mapped, self.total)
        d["properly_paired_pct"] = self.pct(self.properly_paired, self.paired)
        return d

    @staticmethod
    def pct(n: int, d: int) -> float:
        return round(100.0 * n / d, 2) if d else 0.0

    def format(self) -> str:
        rows = [
            (self.total, "reads (primary)"),
            (self.secondary, "secondary"),
            (self.supplementary, "supplementary"),
            (self.duplicates, "duplicates"),
            (self.mapped, f"mapped ({self.pct(self.mapped, self.total):.2f}%)"),
            (self.paired, "paired in sequencing"),
            (self.read1, "read1"),
            (self.read2, "read2"),
            (self.properly_paired, f"properly paired ({self.pct(self.properly_paired, self.paired):.2f}%)"),
            (self.both_mapped, "with itself and mate mapped"),
            (self.singletons, f"singletons ({self.pct(self.singletons, self.paired):.2f}%)"),
            (self.mate_other_contig, "with mate mapped to a different contig"),
            (self.mate_other_contig_mapq5, "with mate mapped to a different contig (mapQ>=5)"),
        ]
        return "\n".join(f"{n:>12,}  {label}" for n, label in rows)


def count_flags(fields: np.ndarray, stats: AlignmentStats) -> None:
    """Add one block of ALIGNMENT_DTYPE records to ``stats`` (flagstat's rules for passing reads)."""
    flag = fields["flag"]

    def has(bit: int) -> np.ndarray:
        return (flag & bit) != 0

    stats.total += int(flag.size)
    stats.qc_failed += int(has(FLAG_QCFAIL).sum())
    stats.secondary += int(has(FLAG_SECONDARY).sum())
    stats.supplementary += int(has(FLAG_SUPPLEMENTARY).sum())
    stats.duplicates += int(has(FLAG_DUPLICATE).sum())
    mapped = ~has(FLAG_UNMAPPED)
    stats.mapped += int(mapped.sum())
    paired = has(FLAG_PAIRED)
    stats.paired += int(paired.sum())
    stats.read1 += int((paired & has(FLAG_READ1)).sum())
    stats.read2 += int((paired & has(FLAG_READ2)).sum())
    stats.properly_paired += int((paired & mapped & has(FLAG_PROPER_PAIR)).sum())
    both = paired & mapped & ~has(FLAG_MATE_UNMAPPED)
    stats.both_mapped += int(both.sum())
    stats.singletons += int((paired & mapped & has(FLAG_MATE_UNMAPPED)).sum())
    other = both & (fields["next_ref_index"] != fields["ref_index"])
    stats.mate_other_contig += int(other.sum())
    stats.mate_other_contig_mapq5 += int((other & (fields["mapq"] >= 5)).sum())


@dataclass
class StatsRequest(Request):
    """Count the alignments of ``dataset`` (``name`` where the location holds several)."""

    kind: ClassVar[str] = "stats"

    dataset: str
    name: str | None = None

    def plan(self, runtime: "Runtime", request_id: str) -> "StatsJob":
        return StatsJob(self, request_id, runtime)


@dataclass
class StatsSummary(Summary):
    stats: AlignmentStats = field(default_factory=AlignmentStats)


class StatsJob(DatasetReadJob):
    """read -> decode -> count, one feed per chunk; the counts are added up at the end."""

    kind: ClassVar[str] = "stats"
    stages = (StagePlan("read", 1), StagePlan("decode", 2), StagePlan("count", 1))
    request: StatsRequest

    def __init__(self, request: StatsRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        self.ds = Dataset.open(request.dataset, request.name)
        if "results" not in self.ds.columns:
            raise DatasetError("dataset has no results column: align it first", dataset=self.ds.name)
        self.columns = ("results", *(c for c in self.ds.columns if is_secondary_column(c)))
        self.read_columns = self.columns

    def stage_count(self, w: Work) -> Work:
        stats = AlignmentStats()
        count_flags(w.data["results"].fields, stats)
        for col in w.desc.columns[1:]:
            extra = w.data[col]
            flags = extra.fields["flag"][extra.present]
            stats.secondary += int(((flags & FLAG_SECONDARY) != 0).sum())
            stats.supplementary += int(((flags & FLAG_SUPPLEMENTARY) != 0).sum())
        w.data = None
        w.out = stats
        self.advance(self.ds.chunks[w.desc.chunk].num_records)
        return w

    def commit(self, outputs: list[Any]) -> StatsSummary:
        total = AlignmentStats()
        for part in outputs:
            for k, v in asdict(part).items():
                setattr(total, k, getattr(total, k) + v)
        return StatsSummary(**self.summary_base(), stats=total)


def alignment_stats(location: str, name: str | None = None, *, runtime: "Runtime | None" = None) -> AlignmentStats:
    """The flagstat-like counts of the dataset at ``location``."""
    from persona.runtime import run_request

    summary = run_request(StatsRequest(dataset=str(location), name=name), runtime=runtime)
    assert isinstance(summary, StatsSummary)
    return summary.stats
