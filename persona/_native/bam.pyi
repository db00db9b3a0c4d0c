"""SAM/BAM record encoding for a whole AGD chunk per call (``native/bam.pyx``; GIL released).

Columns are passed as flat ``(data uint8[], offsets uint64[N+1])`` buffers
(:class:`persona.agd.ragged.RaggedArray` layout); ``rows`` is an
``ALIGNMENT_DTYPE`` structured array. Bases/quals are in sequencing
orientation; records with flag 0x10 are reverse-complemented / reversed.
Bad records raise ``ValueError("record <i>: <what>")``.
"""
import numpy as np
import numpy.typing as npt

def encode_bam(
    name_data: npt.NDArray[np.uint8], name_off: npt.NDArray[np.uint64],
    base_data: npt.NDArray[np.uint8], base_off: npt.NDArray[np.uint64],
    qual_data: npt.NDArray[np.uint8], qual_off: npt.NDArray[np.uint64],
    rows_array: np.ndarray,
    cig_data: npt.NDArray[np.uint8], cig_off: npt.NDArray[np.uint64],
    n_refs: int,
    read_group: bytes,
    tag_data: npt.NDArray[np.uint8] | None = None, tag_off: npt.NDArray[np.uint64] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint64]]:
    """BAM alignment blocks (with block_size prefixes) and per-record offsets (N+1); each record's
    aux bytes (``tag_data``/``tag_off``) follow its RG:Z (none added when they hold their own RG)."""

def format_sam(
    name_data: npt.NDArray[np.uint8], name_off: npt.NDArray[np.uint64],
    base_data: npt.NDArray[np.uint8], base_off: npt.NDArray[np.uint64],
    qual_data: npt.NDArray[np.uint8], qual_off: npt.NDArray[np.uint64],
    rows_array: np.ndarray,
    cig_data: npt.NDArray[np.uint8], cig_off: npt.NDArray[np.uint64],
    ref_data: npt.NDArray[np.uint8], ref_off: npt.NDArray[np.uint64],
    read_group: bytes,
    tag_data: npt.NDArray[np.uint8] | None = None, tag_off: npt.NDArray[np.uint64] | None = None,
) -> bytes:
    """SAM text lines (newline-terminated) equal to ``samtools view`` of :func:`encode_bam`'s records."""

def aux_text(aux: npt.NDArray[np.uint8]) -> bytes:
    """SAM text (``\\tXX:T:value`` per field) of one record's BAM aux bytes; ValueError if malformed."""

def names_sorted(
    name_data: npt.NDArray[np.uint8], name_off: npt.NDArray[np.uint64], previous: bytes
) -> tuple[bool, bytes]:
    """Whether names (to the first whitespace) are non-decreasing after ``previous``; and the last name."""
