"""Type stub for the compiled FASTQ kernels (``native/fastq.pyx``)."""
import numpy as np
import numpy.typing as npt

Buffer = bytes | bytearray | memoryview | npt.NDArray[np.uint8]

_Column = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]

def count_newlines(buf: Buffer) -> int: ...
def find_lines(buf: Buffer, start: int, nlines: int) -> tuple[int, int]: ...
def scan_fastq(
    buf: Buffer, source: str, first_line: int = 1, final: bool = True, max_records: int = -1
) -> tuple[npt.NDArray[np.int64], int]: ...
FIELD_METADATA: int
FIELD_BASES: int
FIELD_QUAL: int

def gather_field(
    field: int,
    buf1: Buffer,
    pos1: npt.NDArray[np.int64],
    buf2: Buffer | None = None,
    pos2: npt.NDArray[np.int64] | None = None,
) -> _Column: ...
def gather_columns(
    buf1: Buffer,
    pos1: npt.NDArray[np.int64],
    buf2: Buffer | None = None,
    pos2: npt.NDArray[np.int64] | None = None,
) -> tuple[_Column, _Column, _Column]: ...
def first_name_mismatch(
    buf1: Buffer, pos1: npt.NDArray[np.int64], buf2: Buffer, pos2: npt.NDArray[np.int64]
) -> int: ...
def read_name(header: bytes) -> bytes: ...
def format_fastq(
    mo: npt.NDArray[np.uint64],
    md: npt.NDArray[np.uint8],
    so: npt.NDArray[np.uint64],
    sd: npt.NDArray[np.uint8],
    qo: npt.NDArray[np.uint64],
    qd: npt.NDArray[np.uint8],
    start: int = 0,
    step: int = 1,
) -> npt.NDArray[np.uint8]: ...
