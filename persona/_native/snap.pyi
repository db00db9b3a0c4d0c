"""Type stub of persona._native.snap (native/snap.pyx): our SNAP-style aligner, GIL released while aligning."""
from typing import Any

import numpy as np
import numpy.typing as npt

#: ALIGNMENT_DTYPE's fields (persona.agd.records)
ALIGNMENT_FIELDS: list[tuple[str, str]]

def seed_layout(k: int) -> tuple[int, int]:
    """(key bits, table bits) of seed length ``k`` (16..32)."""

def seed_histogram(genome: npt.NDArray[np.uint8], k: int, shift: int) -> npt.NDArray[np.uint64]:
    """Seeds per value of ``canonical seed >> shift`` (2 ** (2k - shift) bins, at most 2 ** 28)."""

def canonical_seeds(genome: npt.NDArray[np.uint8], k: int, lo: int = 0, hi: int | None = None,
                    count: int = -1) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """(canonical seed, position, 1 where the genome holds the reverse complement) of every N-free position
    whose canonical seed is in ``[lo, hi)``; ``count`` (when known) sizes the arrays."""

def packed_seeds(genome: npt.NDArray[np.uint8], k: int, pos_bits: int, lo: int = 0, hi: int | None = None,
                 count: int = -1) -> npt.NDArray[np.uint64]:
    """As canonical_seeds, packed ``canon << pos_bits | pos`` (2k + pos_bits <= 64); strands from the genome."""

def count_seeds(values: npt.NDArray[np.uint64], k: int, counts: npt.NDArray[np.uint64], pos_bits: int = 0) -> int:
    """Adds a sorted pass's distinct seeds (canonical values, or packed words) to their tables' counts;
    returns its overflow entries."""

def table_offsets(counts: npt.NDArray[np.uint64], slack: float) -> npt.NDArray[np.uint64]:
    """Each table's first slot (T + 1 entries)."""

def fill_seeds(values: npt.NDArray[np.uint64], pos_sorted: npt.NDArray[np.uint32] | None,
               rc_sorted: npt.NDArray[np.uint8], k: int, offsets: npt.NDArray[np.uint64], genome_len: int,
               slots: Any, overflow: npt.NDArray[np.uint32], o: int, pos_bits: int = 0) -> int:
    """Inserts a sorted pass into the tables and the overflow table from entry ``o``; returns the next entry.
    Packed words (``pos_bits`` > 0) take ``pos_sorted`` None and the genome as ``rc_sorted``."""

def fill_tables(canon_sorted: npt.NDArray[np.uint64], pos_sorted: npt.NDArray[np.uint32],
                rc_sorted: npt.NDArray[np.uint8], k: int, slack: float, genome_len: int) -> tuple[
        npt.NDArray[np.uint64], Any, npt.NDArray[np.uint32]]:
    """(table offsets, slots (or (keys, values) for k > 24), overflow table) from sorted seeds."""

class SnapIndex:
    """The arrays of a built index (numpy arrays or memory maps), shared read-only by every Mapper."""

    seed_len: int
    key_bits: int
    genome_len: int
    n_contigs: int
    arrays: tuple[Any, ...]
    def __init__(self, seed_len: int, genome: npt.NDArray[np.uint8], table_offsets: npt.NDArray[np.uint64],
                 slots: Any, overflow: npt.NDArray[np.uint32], contig_starts: Any, contig_lengths: Any) -> None: ...
    def hits(self, seed: bytes) -> tuple[list[int], list[int]]:
        """(locations holding ``seed``, locations holding its reverse complement)."""

class Mapper:
    """Aligns blocks of reads against a SnapIndex; one thread at a time (owns its scratch memory)."""

    def __init__(self, index: SnapIndex, max_dist: int = 14, max_seeds: int = 25, max_hits: int = 300,
                 extra_depth: int = 2, min_spacing: int = 50, max_spacing: int = 1000,
                 min_read_len: int = 50, max_secondary: int = 0, secondary_delta: int = 0) -> None: ...
    def align(self, offsets: npt.NDArray[np.uint64], data: npt.NDArray[np.uint8],
              qual_offsets: npt.NDArray[np.uint64] | None = None, qual_data: npt.NDArray[np.uint8] | None = None,
              paired: bool = False) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint64], npt.NDArray[np.uint8],
                                             npt.NDArray[np.uint64], npt.NDArray[np.uint8], list[tuple[Any, ...]]]:
        """(fields, CIGAR offsets, CIGAR bytes, tag offsets, tag bytes, secondary columns) of every read of a
        block; each of the ``max_secondary`` secondary columns is (fields, CIGAR offsets, CIGAR bytes,
        present, tag offsets, tag bytes)."""
