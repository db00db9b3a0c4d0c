"""proto3 ``Alignment`` records (results / secondaryN columns) <-> arrays."""
import numpy as np
import numpy.typing as npt

ROW_DTYPE: np.dtype  # equal to persona.agd.records.ALIGNMENT_DTYPE

def encode_alignments(
    fields: npt.NDArray[np.void],
    cig_offsets: npt.NDArray[np.uint64],
    cig_data: npt.NDArray[np.uint8],
    present: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """N rows + N CIGARs -> N serialized messages (byte-identical to protobuf, sub-messages set);
    rows with ``present`` false become zero-length records."""

def decode_alignments(
    offsets: npt.NDArray[np.uint64], data: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.void], npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """N serialized messages -> (rows, cigar offsets, cigar data); ValueError names the record."""
