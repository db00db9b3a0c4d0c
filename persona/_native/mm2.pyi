"""Type stub of persona._native.mm2 (native/mm2.pyx): minimap2's C library, GIL released while mapping."""
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

#: the version of the minimap2 library compiled into this module (e.g. "2.31-r1302")
MINIMAP2_VERSION: str
#: mapping options accepted as overrides (mappy.Aligner keyword names)
OPTION_NAMES: tuple[str, ...]
#: ALIGNMENT_DTYPE's fields (persona.agd.records)
ALIGNMENT_FIELDS: list[tuple[str, str]]

#: (fields (ALIGNMENT_DTYPE layout, one row per read), CIGAR offsets uint64[N+1], CIGAR bytes uint8[],
#:  tag offsets uint64[N+1] | None, tag bytes uint8[] | None): tags are BAM aux bytes per record
Records: TypeAlias = tuple[npt.NDArray[Any], npt.NDArray[np.uint64], npt.NDArray[np.uint8],
                           npt.NDArray[np.uint64] | None, npt.NDArray[np.uint8] | None]
#: an extra column: fields, CIGARs, ``present`` (False: the read has no such alignment), tags
SecondaryRecords: TypeAlias = tuple[npt.NDArray[Any], npt.NDArray[np.uint64], npt.NDArray[np.uint8],
                                    npt.NDArray[np.bool_], npt.NDArray[np.uint64] | None,
                                    npt.NDArray[np.uint8] | None]

class Index:
    """A loaded minimap2 index plus the mapping options fitted to it (read-only, shareable)."""

    preset: str
    path: str
    @staticmethod
    def load(path: str, preset: str = "sr", options: Mapping[str, Any] | None = None) -> Index:
        """Load a ``.mmi``; ValueError if it is not one, multi-part, or the preset/options are unknown."""
    @staticmethod
    def build(fasta: str, preset: str = "sr", out_path: str | None = None, threads: int = 3,
              options: Mapping[str, Any] | None = None) -> Index:
        """Index a FASTA (one part); also writes the ``.mmi`` to ``out_path``. OSError if unreadable."""
    @property
    def names(self) -> list[str]: ...
    @property
    def lengths(self) -> list[int]: ...
    @property
    def k(self) -> int: ...
    @property
    def w(self) -> int: ...
    def mapper(self) -> Mapper: ...

class Mapper:
    """One thread's scratch buffer over an Index; RuntimeError if entered by two threads at once."""

    def __init__(self, index: Index) -> None: ...
    def map(self, offsets: npt.NDArray[np.uint64], data: npt.NDArray[np.uint8],
            names_offsets: npt.NDArray[np.uint64] | None = None, names_data: npt.NDArray[np.uint8] | None = None,
            paired: bool = False, secondary: int = 0, tags: bool = True) -> tuple[Records, list[SecondaryRecords]]:
        """Map a block (interleaved pairs when ``paired``) without the GIL: primary + extra columns
        (every supplementary hit plus up to ``secondary`` secondary hits per read; at least
        ``secondary`` columns); with ``tags``, each record's optional fields as BAM aux bytes."""
