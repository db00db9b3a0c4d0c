# cython: language_level=3
"""FASTQ text <-> AGD column arrays (metadata, bases, qualities).

Parsing is split in two GIL-free passes so the output arrays can be sized
exactly: :func:`scan_fastq` validates records and notes where each line's
content lies in the input buffer (an ``int64[N, 6]`` table of
``meta_start, meta_end, seq_start, seq_end, qual_start, qual_end``), then
:func:`gather_field` copies the spans of one field into a column given as
``(offsets uint64[N+1], data uint8[])`` -- the layout of
:class:`persona.agd.ragged.RaggedArray`. Given two inputs it interleaves them
(record 2i from the first, 2i+1 from the second), which is how paired reads
are stored in AGD.

Records are exactly four lines (no multi-line FASTQ, as in the original). A line
may end in ``\\r\\n``; the ``\\r`` is not part of the content. The header line
must start with ``@`` (the column keeps the line without it), the third line
must start with ``+`` (anything after it is dropped, as in the original), the
sequence may hold only ``ACGTN`` (either case) and the quality line must have the
sequence's length and hold only printable ASCII (``!``..``~``). Errors raise
:class:`persona.errors.InputFormatError` naming the source and the 1-based line.
"""
import numpy as np

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memchr, memcpy, memcmp

from persona.errors import InputFormatError

cdef uint8_t SEQ_OK[256]


cdef void _init_tables():
    cdef int i
    cdef bytes ok = b"ACGTNacgtn"
    for i in range(256):
        SEQ_OK[i] = 0
    for i in range(10):
        SEQ_OK[ok[i]] = 1

_init_tables()

cdef enum:
    ERR_NONE = 0
    ERR_HEADER = 1
    ERR_TRUNCATED = 2
    ERR_PLUS = 3
    ERR_BASE = 4
    ERR_LENGTH = 5
    ERR_QUAL = 6

cdef struct ScanState:
    Py_ssize_t consumed
    Py_ssize_t records
    int err
    Py_ssize_t err_record      # record index within the buffer
    int err_line               # which line of the record (0..3)
    Py_ssize_t err_col         # 0-based column of a bad character
    uint8_t err_char
    Py_ssize_t err_a           # lengths for ERR_LENGTH; lines found for ERR_TRUNCATED
    Py_ssize_t err_b

cdef uint8_t NL = 10
cdef uint8_t CR = 13


cdef Py_ssize_t _count_nl(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    # A plain counting loop over fixed-size blocks: the compiler vectorises the
    # inner loop, which beats one memchr call per line (FASTQ lines are short).
    cdef Py_ssize_t count = 0, i = 0, j, m
    cdef uint32_t block
    while i < n:
        m = n - i
        if m > 4096:
            m = 4096
        block = 0
        for j in range(m):
            block += (p[i + j] == 10)
        count += block
        i += m
    return count


cdef void _scan(const uint8_t* p, Py_ssize_t n, bint final, Py_ssize_t max_records,
                int64_t* pos, Py_ssize_t cap, ScanState* st) noexcept nogil:
    cdef Py_ssize_t i = 0, rec = 0, k, j, le
    cdef Py_ssize_t s[4]
    cdef Py_ssize_t ce[4]
    cdef const uint8_t* hit
    cdef bint stop = False
    st.err = ERR_NONE
    st.err_record = 0
    st.err_line = 0
    st.err_col = 0
    st.err_char = 0
    st.err_a = 0
    st.err_b = 0
    while rec < max_records and rec < cap and i < n:
        # Blank lines are tolerated only at the very end of the input.
        if final and (p[i] == NL or p[i] == CR):
            j = i
            while j < n and (p[j] == NL or p[j] == CR):
                j += 1
            if j == n:
                i = n
                break
        for k in range(4):
            s[k] = i
            hit = NULL
            if k == 1 or k == 3:
                # Sequence and quality lines are validated while looking for
                # their end: one pass over the bytes instead of two.
                j = i
                if k == 1:
                    while j < n and SEQ_OK[p[j]]:
                        j += 1
                else:
                    while j < n and <uint8_t>(p[j] - 33) <= 93:   # '!'..'~'
                        j += 1
                if j < n and p[j] == NL:
                    hit = p + j
                elif j + 1 < n and p[j] == CR and p[j + 1] == NL:
                    hit = p + j + 1
                elif j < n and not (p[j] == CR and j + 1 == n):
                    st.err = ERR_BASE if k == 1 else ERR_QUAL
                    st.err_col = j - s[k]
                    st.err_char = p[j]
                    st.err_record = rec
                    st.err_line = k
                    stop = True
                    break
            elif i < n:
                hit = <const uint8_t*>memchr(p + i, NL, n - i)
            if hit != NULL:
                le = hit - p
            elif final and k == 3 and (i < n or ce[1] == s[1]):
                # The last line of the input may lack its newline (an empty
                # quality line of an empty read may even be absent).
                le = n
            else:
                if final:
                    st.err = ERR_TRUNCATED
                    st.err_record = rec
                    st.err_line = k
                    st.err_a = k
                stop = True
                break
            ce[k] = le
            if le > s[k] and p[le - 1] == CR:
                ce[k] = le - 1
            i = le + 1
            # Validate each line as soon as it is complete.
            if k == 0:
                if ce[0] == s[0] or p[s[0]] != 64:   # '@'
                    st.err = ERR_HEADER
                    st.err_a = ce[0] - s[0]
            elif k == 2:
                if ce[2] == s[2] or p[s[2]] != 43:   # '+'
                    st.err = ERR_PLUS
            elif k == 3:
                if ce[3] - s[3] != ce[1] - s[1]:
                    st.err = ERR_LENGTH
                    st.err_a = ce[1] - s[1]
                    st.err_b = ce[3] - s[3]
            if st.err != ERR_NONE:
                st.err_record = rec
                st.err_line = k
                stop = True
                break
        if stop:
            i = s[0]
            break
        pos[6 * rec + 0] = s[0] + 1
        pos[6 * rec + 1] = ce[0]
        pos[6 * rec + 2] = s[1]
        pos[6 * rec + 3] = ce[1]
        pos[6 * rec + 4] = s[3]
        pos[6 * rec + 5] = ce[3]
        rec += 1
    if i > n:
        i = n
    st.consumed = i
    st.records = rec


def _char(uint8_t c) -> str:
    return repr(chr(c)) if 32 <= c < 127 else f"byte 0x{c:02x}"


def _raise(ScanState st, str source, Py_ssize_t first_line):
    line = first_line + 4 * st.err_record + st.err_line
    if st.err == ERR_HEADER and st.err_a == 0:
        msg = (f"{source}:{line}: FASTQ header line does not start with '@' (blank line; "
               "blank lines are allowed only at the end of the file)")
    elif st.err == ERR_HEADER:
        msg = f"{source}:{line}: FASTQ header line does not start with '@'"
    elif st.err == ERR_TRUNCATED:
        msg = (f"{source}:{line}: truncated FASTQ record at end of input "
               f"(record starting at line {first_line + 4 * st.err_record} has {st.err_a} of 4 lines)")
    elif st.err == ERR_PLUS:
        msg = f"{source}:{line}: '+' separator line missing (line does not start with '+')"
    elif st.err == ERR_BASE:
        msg = (f"{source}:{line}: invalid character {_char(st.err_char)} in sequence at column "
               f"{st.err_col + 1}; allowed are A, C, G, T, N")
    elif st.err == ERR_LENGTH:
        msg = (f"{source}:{line}: quality length {st.err_b} does not match sequence length {st.err_a}")
    elif st.err == ERR_QUAL:
        msg = (f"{source}:{line}: invalid quality character {_char(st.err_char)} at column "
               f"{st.err_col + 1}; allowed are '!'..'~' (Phred+33)")
    else:
        msg = f"{source}:{line}: malformed FASTQ record"
    err = InputFormatError(msg)
    err.file = source   # the message already names both; attributes are for callers
    err.line = line
    raise err


def count_newlines(const uint8_t[::1] buf) -> int:
    """Number of ``\\n`` bytes in ``buf``."""
    cdef Py_ssize_t n = buf.shape[0], count = 0
    if n == 0:
        return 0
    cdef const uint8_t* p = &buf[0]
    with nogil:
        count = _count_nl(p, n)
    return count


def find_lines(const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t nlines):
    """Skip up to ``nlines`` newlines from ``start``.

    Returns ``(found, end)``: how many newlines were found (``<= nlines``) and
    the position just after the last one found (``start`` if none).
    Used to cut decompressed text into chunks of whole records cheaply.
    """
    cdef Py_ssize_t n = buf.shape[0], found = 0, i = start
    cdef const uint8_t* p
    cdef const uint8_t* hit
    if start < 0 or start > n:
        raise ValueError(f"start {start} outside buffer of {n} bytes")
    if n == 0 or nlines <= 0:
        return 0, start
    p = &buf[0]
    with nogil:
        # Most calls find fewer newlines than asked for: count them fast, and
        # walk line by line only in the block where the chunk ends.
        found = _count_nl(p + start, n - start)
        if found < nlines:
            i = n
            # i must be just after the last newline, not the end of the buffer
            while i > start and p[i - 1] != NL:
                i -= 1
        else:
            found = 0
            while found < nlines and i < n:
                hit = <const uint8_t*>memchr(p + i, NL, n - i)
                if hit == NULL:
                    break
                found += 1
                i = (hit - p) + 1
    return found, i


def scan_fastq(const uint8_t[::1] buf, str source, Py_ssize_t first_line=1, bint final=True,
               Py_ssize_t max_records=-1):
    """Validate the complete records at the start of ``buf``.

    Returns ``(positions, consumed)``: ``positions`` is ``int64[N, 6]`` (content
    spans of header-without-``@``, sequence and quality of each record),
    ``consumed`` the number of bytes those records take, so the caller can carry
    ``buf[consumed:]`` over to the next buffer. With ``final`` the buffer ends the
    input: an incomplete record is an error and trailing blank lines are allowed.
    At most ``max_records`` records are taken if it is not negative.
    ``first_line`` is the file line number of ``buf[0]``, used in error messages.
    """
    cdef Py_ssize_t n = buf.shape[0], cap
    cdef ScanState st
    if max_records < 0:
        max_records = n + 1
    if n == 0:
        return np.empty((0, 6), dtype=np.int64), 0
    cdef const uint8_t* p = &buf[0]
    with nogil:
        cap = _count_nl(p, n) // 4 + 1
    if cap > max_records:
        cap = max_records
    positions = np.empty((cap, 6), dtype=np.int64)
    cdef int64_t[:, ::1] pv = positions
    cdef int64_t* pp = &pv[0, 0] if cap > 0 else NULL
    with nogil:
        _scan(p, n, final, max_records, pp, cap, &st)
    if st.err != ERR_NONE:
        _raise(st, source, first_line)
    return positions[: st.records], st.consumed


cdef void _lengths(const int64_t[:, ::1] pos, int field, Py_ssize_t start, Py_ssize_t step,
                   uint64_t* o) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(pos.shape[0]):
        o[start + step * i + 1] = pos[i, 2 * field + 1] - pos[i, 2 * field]


cdef void _copy(const uint8_t* p, const int64_t[:, ::1] pos, int field, Py_ssize_t start,
                Py_ssize_t step, const uint64_t* o, uint8_t* d) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(pos.shape[0]):
        memcpy(d + o[start + step * i], p + pos[i, 2 * field], pos[i, 2 * field + 1] - pos[i, 2 * field])


cdef void _prefix(uint64_t* o, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    o[0] = 0
    for i in range(n):
        o[i + 1] += o[i]


cdef inline const uint8_t* _ptr(const uint8_t[::1] b) noexcept nogil:
    if b.shape[0] == 0:
        return NULL
    return &b[0]


FIELD_METADATA = 0
FIELD_BASES = 1
FIELD_QUAL = 2


def gather_field(int field, const uint8_t[::1] buf1, const int64_t[:, ::1] pos1,
                 const uint8_t[::1] buf2=None, const int64_t[:, ::1] pos2=None):
    """Copy one field (0 metadata, 1 bases, 2 qualities) of the records found by
    :func:`scan_fastq` into a column ``(offsets uint64[N+1], data uint8[])``.

    With a second input (same number of records) the column interleaves the
    two: record ``2i`` is ``pos1[i]``, record ``2i+1`` is ``pos2[i]``. The three
    fields may be gathered by different threads at the same time.
    """
    if field < 0 or field > 2:
        raise ValueError(f"field must be 0, 1 or 2, got {field}")
    cdef bint paired = buf2 is not None
    cdef Py_ssize_t n1 = pos1.shape[0], n
    if paired:
        if pos2 is None or pos2.shape[0] != n1:
            raise ValueError("paired gather needs the same number of records in both inputs")
        n = 2 * n1
    else:
        n = n1
    offsets = np.zeros(n + 1, dtype=np.uint64)
    cdef uint64_t[::1] o = offsets
    cdef Py_ssize_t step = 2 if paired else 1
    with nogil:
        _lengths(pos1, field, 0, step, &o[0])
        if paired:
            _lengths(pos2, field, 1, 2, &o[0])
        _prefix(&o[0], n)
    data = np.empty(o[n], dtype=np.uint8)
    cdef uint8_t[::1] d = data
    cdef uint8_t* dp = &d[0] if d.shape[0] else NULL
    with nogil:
        _copy(_ptr(buf1), pos1, field, 0, step, &o[0], dp)
        if paired:
            _copy(_ptr(buf2), pos2, field, 1, 2, &o[0], dp)
    return offsets, data


def gather_columns(const uint8_t[::1] buf1, const int64_t[:, ::1] pos1,
                   const uint8_t[::1] buf2=None, const int64_t[:, ::1] pos2=None):
    """All three fields: ``(metadata, bases, qual)``, each as :func:`gather_field` returns."""
    return tuple(gather_field(f, buf1, pos1, buf2, pos2) for f in range(3))


cdef inline Py_ssize_t _name_len(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Length of a read name: up to the first blank, without a trailing /1 or /2."""
    cdef Py_ssize_t i = 0
    while i < n and p[i] != 32 and p[i] != 9:
        i += 1
    if i >= 2 and p[i - 2] == 47 and (p[i - 1] == 49 or p[i - 1] == 50):   # "/1" "/2"
        i -= 2
    return i


def first_name_mismatch(const uint8_t[::1] buf1, const int64_t[:, ::1] pos1,
                        const uint8_t[::1] buf2, const int64_t[:, ::1] pos2) -> int:
    """Index of the first record pair whose read names differ, or -1.

    Names are compared up to the first space or tab, ignoring a trailing
    ``/1`` or ``/2``. Only the first ``min(len(pos1), len(pos2))`` pairs are checked.
    """
    cdef Py_ssize_t n = min(pos1.shape[0], pos2.shape[0]), i, l1, l2, bad = -1
    cdef const uint8_t* p1 = _ptr(buf1)
    cdef const uint8_t* p2 = _ptr(buf2)
    with nogil:
        for i in range(n):
            l1 = _name_len(p1 + pos1[i, 0], pos1[i, 1] - pos1[i, 0])
            l2 = _name_len(p2 + pos2[i, 0], pos2[i, 1] - pos2[i, 0])
            if l1 != l2 or memcmp(p1 + pos1[i, 0], p2 + pos2[i, 0], l1) != 0:
                bad = i
                break
    return bad


def read_name(bytes header) -> bytes:
    """The pairing name of a header (see :func:`first_name_mismatch`)."""
    cdef const uint8_t* p = header
    return header[: _name_len(p, len(header))]


def format_fastq(const uint64_t[::1] mo, const uint8_t[::1] md,
                 const uint64_t[::1] so, const uint8_t[::1] sd,
                 const uint64_t[::1] qo, const uint8_t[::1] qd,
                 Py_ssize_t start=0, Py_ssize_t step=1):
    """FASTQ text (``uint8`` array) of records ``start, start+step, ...``.

    Each record becomes ``@<metadata>\\n<bases>\\n+\\n<qual>\\n``. Raises
    ``ValueError`` naming the record if its bases and qualities differ in length
    or the three columns hold different numbers of records.
    """
    cdef Py_ssize_t n = mo.shape[0] - 1, i, total = 0, bad = -1, ml, sl, ql
    if so.shape[0] - 1 != n or qo.shape[0] - 1 != n:
        raise ValueError(
            f"columns hold different record counts: metadata {n}, bases {so.shape[0] - 1}, "
            f"qual {qo.shape[0] - 1}")
    if step <= 0 or start < 0:
        raise ValueError("start must be >= 0 and step > 0")
    with nogil:
        i = start
        while i < n:
            sl = so[i + 1] - so[i]
            if <Py_ssize_t>(qo[i + 1] - qo[i]) != sl:
                bad = i
                break
            total += (mo[i + 1] - mo[i]) + 2 * sl + 6
            i += step
    if bad >= 0:
        raise ValueError(
            f"record {bad}: {so[bad + 1] - so[bad]} bases but {qo[bad + 1] - qo[bad]} qualities")
    out = np.empty(total, dtype=np.uint8)
    cdef uint8_t[::1] ov = out
    cdef uint8_t* q = &ov[0] if total else NULL
    cdef const uint8_t* mp = _ptr(md)
    cdef const uint8_t* sp = _ptr(sd)
    cdef const uint8_t* qp = _ptr(qd)
    with nogil:
        i = start
        while i < n:
            ml = mo[i + 1] - mo[i]
            sl = so[i + 1] - so[i]
            q[0] = 64
            memcpy(q + 1, mp + mo[i], ml)
            q += ml + 1
            q[0] = NL
            memcpy(q + 1, sp + so[i], sl)
            q += sl + 1
            q[0] = NL
            q[1] = 43
            q[2] = NL
            memcpy(q + 3, qp + qo[i], sl)
            q += sl + 3
            q[0] = NL
            q += 1
            i += step
    return out
