# cython: language_level=3
"""SAM/BAM record encoding for a whole AGD chunk in one call (GIL released).

Inputs are the decoded AGD columns of one chunk, as flat buffers:

* names: the ``metadata`` column (FASTQ header / QNAME); the read name is the
  text up to the first space or tab; for paired records (flag 0x1) a trailing
  ``/1`` or ``/2`` is dropped, as bwa and Picard FastqToSam do.
* bases: the ``base`` column as text, in the ORIGINAL sequencing orientation.
  Records with flag 0x10 are reverse-complemented on output (SAM stores the
  reference strand). Characters map through htslib's nt16 table (unknown -> N).
* quals: the ``qual`` column, Phred+33 text in sequencing orientation (reversed
  for flag 0x10). An empty record or exactly ``*`` means "no qualities".
* rows: the ``ALIGNMENT_DTYPE`` structured array (packed, 40 bytes per row).
* cigars: CIGAR text per record (empty or ``*`` means none).
* tags (optional): each record's optional fields as BAM binary aux bytes (the
  AGD ``tags`` columns), written after ``RG:Z`` as they are (BAM) or rendered
  in SAM syntax (SAM text, as ``samtools view`` prints them).

Both kernels validate every record first (pass 1, also measuring the output),
then write (pass 2). A bad record makes them raise ``ValueError`` naming the
record's index within the chunk and what is wrong; callers wrap it with the
chunk key.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.stdio cimport snprintf

cnp.import_array()

from alignment_row cimport AlnRec

# Error codes from pass 1; the messages are built with the GIL held.
cdef enum:
    OK = 0
    E_NAME_LONG = 1
    E_CIGAR_SYNTAX = 2
    E_CIGAR_OPS = 3
    E_QUAL_LEN = 4
    E_CIGAR_SEQ = 5
    E_REF_INDEX = 6
    E_POSITION = 7
    E_QUAL_CHAR = 8
    E_MATE_REF_INDEX = 9
    E_TAGS = 10

_MESSAGES = {
    E_NAME_LONG: "read name longer than 254 characters",
    E_CIGAR_SYNTAX: "malformed CIGAR string",
    E_CIGAR_OPS: "CIGAR has more than 65535 operations",
    E_QUAL_LEN: "quality string length differs from sequence length",
    E_CIGAR_SEQ: "CIGAR query length differs from sequence length",
    E_REF_INDEX: "ref_index is not an index of reference_contigs",
    E_POSITION: "position or template length out of BAM's int32 range",
    E_QUAL_CHAR: "quality character below '!' (Phred+33)",
    E_MATE_REF_INDEX: "next_ref_index is not an index of reference_contigs",
    E_TAGS: "malformed optional tags (not BAM binary aux fields)",
}

cdef uint8_t NT16[256]
cdef uint8_t NT16_COMP[16]
cdef uint8_t CIGAR_CODE[256]
cdef char* NT16_CHARS = b"=ACMGRSVTWYHKDBN"
cdef char* CIGAR_CHARS = b"MIDNSHP=X"


cdef void _init_tables():
    cdef int i
    cdef bytes alphabet = b"=ACMGRSVTWYHKDBN"
    cdef bytes comp = b"=TGKCYSBAWRDMHVN"
    for i in range(256):
        NT16[i] = 15
        CIGAR_CODE[i] = 255
    for i in range(16):
        NT16[alphabet[i]] = i
        if alphabet[i] >= 65:  # letters: lower case codes the same base
            NT16[alphabet[i] + 32] = i
        NT16_COMP[i] = alphabet.index(comp[i:i + 1])
    for i in range(9):
        CIGAR_CODE[<uint8_t>CIGAR_CHARS[i]] = i


_init_tables()


cdef inline bint _is_qual_missing(const uint8_t* q, int64_t n) noexcept nogil:
    return n == 0 or (n == 1 and q[0] == 42)  # '*'


cdef inline int64_t _name_len(const uint8_t* s, int64_t n, uint32_t flag) noexcept nogil:
    """Length of the read name: up to the first whitespace, minus a /1 or /2 suffix on paired reads."""
    cdef int64_t i = 0
    while i < n and s[i] != 32 and s[i] != 9:
        i += 1
    if (flag & 1) and i > 2 and s[i - 2] == 47 and (s[i - 1] == 49 or s[i - 1] == 50):
        i -= 2
    return i


cdef int _parse_cigar(const uint8_t* s, int64_t n, uint32_t* out, int64_t* n_ops,
                      int64_t* qlen, int64_t* rlen) noexcept nogil:
    """Parse CIGAR text; writes packed ops to ``out`` when not NULL. Returns an error code."""
    cdef int64_t i = 0, ops = 0, q = 0, r = 0
    cdef uint64_t length
    cdef uint8_t code
    cdef bint digits
    if n == 0 or (n == 1 and s[0] == 42):
        n_ops[0] = 0
        qlen[0] = 0
        rlen[0] = 0
        return OK
    while i < n:
        length = 0
        digits = False
        while i < n and 48 <= s[i] <= 57:
            length = length * 10 + (s[i] - 48)
            if length >= (1 << 28):
                return E_CIGAR_SYNTAX
            digits = True
            i += 1
        if not digits or i >= n:
            return E_CIGAR_SYNTAX
        code = CIGAR_CODE[s[i]]
        if code == 255:
            return E_CIGAR_SYNTAX
        i += 1
        if out != NULL:
            out[ops] = <uint32_t>(length << 4) | code
        ops += 1
        # query-consuming: M I S = X ; reference-consuming: M D N = X
        if code == 0 or code == 1 or code == 4 or code == 7 or code == 8:
            q += length
        if code == 0 or code == 2 or code == 3 or code == 7 or code == 8:
            r += length
    if ops > 65535:
        return E_CIGAR_OPS
    n_ops[0] = ops
    qlen[0] = q
    rlen[0] = r
    return OK


cdef inline int _reg2bin(int64_t beg, int64_t end) noexcept nogil:
    """The UCSC/BAM binning scheme (SAM spec 5.3); ``beg`` may be -1 for unplaced reads."""
    end -= 1
    if (beg >> 14) == (end >> 14):
        return <int>(((1 << 15) - 1) // 7 + (beg >> 14))
    if (beg >> 17) == (end >> 17):
        return <int>(((1 << 12) - 1) // 7 + (beg >> 17))
    if (beg >> 20) == (end >> 20):
        return <int>(((1 << 9) - 1) // 7 + (beg >> 20))
    if (beg >> 23) == (end >> 23):
        return <int>(((1 << 6) - 1) // 7 + (beg >> 23))
    if (beg >> 26) == (end >> 26):
        return <int>(((1 << 3) - 1) // 7 + (beg >> 26))
    return 0


cdef inline bint _fits_i32(int64_t v) noexcept nogil:
    return -2147483648 <= v <= 2147483647


cdef int _measure(
    Py_ssize_t n,
    const uint8_t* name_data, const uint64_t* name_off,
    const uint8_t* base_data, const uint64_t* base_off,
    const uint8_t* qual_data, const uint64_t* qual_off,
    const AlnRec* rows,
    const uint8_t* cig_data, const uint64_t* cig_off,
    int32_t n_refs,
    int64_t* name_len, int64_t* n_cigar, int64_t* rlen,
    Py_ssize_t* bad,
) noexcept nogil:
    """Pass 1: validate every record, store per-record name length, CIGAR op count and reference length."""
    cdef Py_ssize_t i
    cdef int err
    cdef int64_t qlen, seq_len, ql, k
    cdef const uint8_t* q
    for i in range(n):
        name_len[i] = _name_len(name_data + name_off[i], <int64_t>(name_off[i + 1] - name_off[i]), rows[i].flag)
        if name_len[i] > 254:
            bad[0] = i
            return E_NAME_LONG
        err = _parse_cigar(cig_data + cig_off[i], <int64_t>(cig_off[i + 1] - cig_off[i]), NULL,
                           &n_cigar[i], &qlen, &rlen[i])
        if err != OK:
            bad[0] = i
            return err
        seq_len = <int64_t>(base_off[i + 1] - base_off[i])
        if n_cigar[i] > 0 and seq_len > 0 and qlen != seq_len:
            bad[0] = i
            return E_CIGAR_SEQ
        q = qual_data + qual_off[i]
        ql = <int64_t>(qual_off[i + 1] - qual_off[i])
        if not _is_qual_missing(q, ql):
            if ql != seq_len:
                bad[0] = i
                return E_QUAL_LEN
            for k in range(ql):
                if q[k] < 33:
                    bad[0] = i
                    return E_QUAL_CHAR
        if rows[i].ref_index < -1 or rows[i].ref_index >= n_refs:
            bad[0] = i
            return E_REF_INDEX
        if rows[i].next_ref_index < -1 or rows[i].next_ref_index >= n_refs:
            bad[0] = i
            return E_MATE_REF_INDEX
        if not (_fits_i32(rows[i].position) and _fits_i32(rows[i].next_position)
                and _fits_i32(rows[i].template_length)):
            bad[0] = i
            return E_POSITION
    return OK


cdef inline uint8_t _clamp_mapq(int32_t m) noexcept nogil:
    if m < 0:
        return 0
    if m > 255:
        return 255
    return <uint8_t>m


cdef inline uint8_t* _put_u32(uint8_t* p, uint32_t v) noexcept nogil:
    # BAM is little-endian; x86/ARM hosts are too, but write bytewise to be portable.
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF
    return p + 4


cdef inline uint8_t* _put_u16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    return p + 2


def _check(int err, Py_ssize_t bad, object rows) -> None:
    if err != OK:
        row = rows[bad]
        raise ValueError(
            f"record {bad}: {_MESSAGES[err]} (flag={int(row['flag'])}, ref_index={int(row['ref_index'])}, "
            f"position={int(row['position'])})"
        )



cdef inline int _aux_elem_size(uint8_t t) noexcept nogil:
    if t == 65 or t == 99 or t == 67:  # A c C
        return 1
    if t == 115 or t == 83:  # s S
        return 2
    if t == 105 or t == 73 or t == 102:  # i I f
        return 4
    if t == 100:  # d
        return 8
    return 0


cdef inline bint _is_alpha(uint8_t c) noexcept nogil:
    return (65 <= c <= 90) or (97 <= c <= 122)


cdef inline bint _is_alnum(uint8_t c) noexcept nogil:
    return _is_alpha(c) or (48 <= c <= 57)


cdef int _aux_walk(const uint8_t* a, int64_t n, int64_t* text_len, uint8_t* has_rg) noexcept nogil:
    """Check BAM aux bytes; ``text_len`` gets an upper bound of their SAM text (with tabs),
    ``has_rg`` whether they hold an ``RG`` field."""
    cdef int64_t i = 0, b = 0, sz, cnt, j
    cdef uint8_t t, sub
    has_rg[0] = 0
    while i < n:
        if n - i < 4 or not _is_alpha(a[i]) or not _is_alnum(a[i + 1]):
            return E_TAGS
        if a[i] == 82 and a[i + 1] == 71:
            has_rg[0] = 1
        t = a[i + 2]
        i += 3
        if t == 90 or t == 72:  # Z H
            j = i
            while j < n and a[j] != 0:
                j += 1
            if j >= n:
                return E_TAGS
            b += 6 + (j - i)
            i = j + 1
        elif t == 66:  # B
            if n - i < 5:
                return E_TAGS
            sub = a[i]
            sz = _aux_elem_size(sub)
            if sz == 0 or sub == 65 or sub == 100:
                return E_TAGS
            cnt = <int64_t>a[i + 1] | (<int64_t>a[i + 2] << 8) | (<int64_t>a[i + 3] << 16) | (<int64_t>a[i + 4] << 24)
            i += 5
            if cnt * sz > n - i:
                return E_TAGS
            b += 8 + cnt * 18
            i += cnt * sz
        else:
            sz = _aux_elem_size(t)
            if sz == 0 or n - i < sz:
                return E_TAGS
            b += 6 + 26
            i += sz
    text_len[0] = b
    return OK


cdef inline int64_t _le(const uint8_t* p, int sz, bint signed) noexcept nogil:
    cdef uint64_t u = 0
    cdef int k
    for k in range(sz):
        u |= (<uint64_t>p[k]) << (8 * k)
    if signed and sz < 8 and (u >> (8 * sz - 1)) & 1:
        u |= (<uint64_t>0xFFFFFFFFFFFFFFFF) << (8 * sz)
    return <int64_t>u


cdef inline uint8_t* _put_num(uint8_t* p, const uint8_t* v, uint8_t t) noexcept nogil:
    """One numeric value of BAM type ``t`` at ``v`` as SAM text (floats as ``%g``, like samtools)."""
    cdef float f
    cdef double d
    cdef int w
    if t == 102:
        memcpy(&f, v, 4)
        if f == 0 and v[3] == 0:  # +0 (minimap2's de:f on exact matches): the common case, no printf
            p[0] = 48
            return p + 1
        w = snprintf(<char*>p, 24, "%g", <double>f)
        return p + w
    if t == 100:
        memcpy(&d, v, 8)
        w = snprintf(<char*>p, 24, "%g", d)
        return p + w
    return _put_int(p, _le(v, _aux_elem_size(t), t == 99 or t == 115 or t == 105))


cdef uint8_t* _aux_text(const uint8_t* a, int64_t n, uint8_t* p) noexcept nogil:
    """SAM text of checked BAM aux bytes: ``\\tXX:T:value`` per field."""
    cdef int64_t i = 0, cnt, k, sz
    cdef uint8_t t, sub
    while i < n:
        p[0] = 9
        p[1] = a[i]
        p[2] = a[i + 1]
        p[3] = 58
        t = a[i + 2]
        i += 3
        if t == 99 or t == 67 or t == 115 or t == 83 or t == 105 or t == 73:
            p[4] = 105  # i
        elif t == 100:
            p[4] = 102  # f
        else:
            p[4] = t
        p[5] = 58
        p += 6
        if t == 65:
            p[0] = a[i]
            p += 1
            i += 1
        elif t == 90 or t == 72:
            while a[i] != 0:
                p[0] = a[i]
                p += 1
                i += 1
            i += 1
        elif t == 66:
            sub = a[i]
            sz = _aux_elem_size(sub)
            cnt = _le(a + i + 1, 4, False)
            i += 5
            p[0] = sub
            p += 1
            for k in range(cnt):
                p[0] = 44
                p = _put_num(p + 1, a + i, sub)
                i += sz
        else:
            p = _put_num(p, a + i, t)
            i += _aux_elem_size(t)
    return p


cdef int _check_tags(Py_ssize_t n, const uint8_t* td, const uint64_t* to, uint64_t t_len,
                     int64_t* text_len, uint8_t* has_rg, Py_ssize_t* bad) noexcept nogil:
    """Check every record's aux bytes; ``text_len[i]`` gets the SAM text bound of record i,
    ``has_rg[i]`` whether it has its own RG (then the read group's RG:Z is not added)."""
    cdef Py_ssize_t i
    for i in range(n):
        if to[i + 1] < to[i] or to[i + 1] > t_len or \
                _aux_walk(td + to[i], <int64_t>(to[i + 1] - to[i]), &text_len[i], &has_rg[i]) != OK:
            bad[0] = i
            return E_TAGS
    return OK


def aux_text(const uint8_t[::1] aux) -> bytes:
    """SAM text (``\\tXX:T:value`` per field) of one record's BAM aux bytes; ValueError if malformed."""
    cdef int64_t bound = 0
    cdef uint8_t zero = 0, has_rg = 0
    cdef const uint8_t* a = &aux[0] if aux.shape[0] else &zero
    if _aux_walk(a, aux.shape[0], &bound, &has_rg) != OK:
        raise ValueError(_MESSAGES[E_TAGS])
    out = np.empty(bound + 1, np.uint8)
    cdef uint8_t[::1] v = out
    cdef uint8_t* end = _aux_text(a, aux.shape[0], &v[0])
    return out[:end - &v[0]].tobytes()


def encode_bam(
    const uint8_t[::1] name_data, const uint64_t[::1] name_off,
    const uint8_t[::1] base_data, const uint64_t[::1] base_off,
    const uint8_t[::1] qual_data, const uint64_t[::1] qual_off,
    object rows_array,
    const uint8_t[::1] cig_data, const uint64_t[::1] cig_off,
    int32_t n_refs,
    bytes read_group,
    const uint8_t[::1] tag_data=None, const uint64_t[::1] tag_off=None,
):
    """Encode N records as concatenated BAM alignment blocks.

    Returns ``(data uint8[], offsets uint64[N+1])``: record i is
    ``data[offsets[i]:offsets[i+1]]`` (including its ``block_size`` prefix).
    ``read_group`` (may be empty) is written as an ``RG:Z`` tag on every record;
    ``tag_data``/``tag_off`` (optional) hold each record's further optional
    fields as BAM aux bytes, checked and appended after it; a record whose
    tags hold their own ``RG`` (an imported BAM's per-read group) gets no other.
    """
    cdef const AlnRec[::1] rows = rows_array
    cdef Py_ssize_t n = rows.shape[0]
    if name_off.shape[0] != n + 1 or base_off.shape[0] != n + 1 or qual_off.shape[0] != n + 1 \
            or cig_off.shape[0] != n + 1:
        raise ValueError("column lengths differ within the chunk")
    cdef int64_t[::1] name_len = np.empty(n, np.int64)
    cdef int64_t[::1] n_cigar = np.empty(n, np.int64)
    cdef int64_t[::1] rlen = np.empty(n, np.int64)
    cdef uint64_t[::1] offsets = np.empty(n + 1, np.uint64)
    cdef Py_ssize_t bad = 0, i
    cdef int err
    cdef const uint8_t* rg = read_group
    cdef int64_t rg_len = len(read_group)
    cdef int64_t tag_len = rg_len + 4 if rg_len > 0 else 0
    cdef int64_t total = 0, seq_len, l_name, ncig, end, k, j, ql
    cdef uint8_t* p
    cdef uint8_t* rec
    cdef const uint8_t* s
    cdef const uint8_t* q
    cdef uint8_t code
    cdef uint32_t flag
    cdef bint rev
    cdef int64_t dummy_q, dummy_r, dummy_n, max_cigar = 0
    # Empty buffers have no pointer to take; use a 1-byte stand-in.
    cdef uint8_t zero = 0
    cdef const uint8_t* nd = &name_data[0] if name_data.shape[0] else &zero
    cdef const uint8_t* bd = &base_data[0] if base_data.shape[0] else &zero
    cdef const uint8_t* qd = &qual_data[0] if qual_data.shape[0] else &zero
    cdef const uint8_t* cd = &cig_data[0] if cig_data.shape[0] else &zero
    cdef const AlnRec* rp = &rows[0] if n else NULL
    cdef bint has_tags = tag_off is not None
    if has_tags and (tag_data is None or tag_off.shape[0] != n + 1):
        raise ValueError("column lengths differ within the chunk (tags)")
    cdef const uint8_t* td = &tag_data[0] if has_tags and tag_data.shape[0] else &zero
    cdef const uint64_t* to = &tag_off[0] if has_tags else NULL
    cdef uint64_t t_len = tag_data.shape[0] if has_tags else 0
    cdef int64_t[::1] text_len = np.empty(n if has_tags else 0, np.int64)
    cdef int64_t* tlp = &text_len[0] if has_tags and n else NULL
    cdef uint8_t[::1] own_rg = np.zeros(n if has_tags else 0, np.uint8)
    cdef uint8_t* orp = &own_rg[0] if has_tags and n else NULL

    with nogil:
        err = _measure(n, nd, &name_off[0], bd, &base_off[0], qd, &qual_off[0], rp, cd, &cig_off[0],
                       n_refs, &name_len[0], &n_cigar[0], &rlen[0], &bad)
        if err == OK and has_tags:
            err = _check_tags(n, td, to, t_len, tlp, orp, &bad)
        if err == OK:
            offsets[0] = 0
            for i in range(n):
                l_name = name_len[i] if name_len[i] > 0 else 1  # empty name -> "*"
                seq_len = <int64_t>(base_off[i + 1] - base_off[i])
                total += 36 + l_name + 1 + 4 * n_cigar[i] + (seq_len + 1) // 2 + seq_len + tag_len
                if has_tags:
                    total += <int64_t>(to[i + 1] - to[i])
                    if orp[i]:  # the record's own RG replaces the read group's
                        total -= tag_len
                offsets[i + 1] = total
                if n_cigar[i] > max_cigar:
                    max_cigar = n_cigar[i]
    _check(err, bad, rows_array)

    out = np.empty(total, np.uint8)
    cdef uint8_t[::1] outv = out
    cdef uint8_t* base_ptr = &outv[0] if total else &zero
    cdef uint32_t[::1] cig_scratch = np.empty(max(1, max_cigar), np.uint32)
    cdef uint32_t* ops = &cig_scratch[0]

    with nogil:
        for i in range(n):
            rec = base_ptr + offsets[i]
            p = rec
            flag = rows[i].flag
            rev = (flag & 0x10) != 0
            seq_len = <int64_t>(base_off[i + 1] - base_off[i])
            l_name = name_len[i] if name_len[i] > 0 else 1
            ncig = n_cigar[i]
            if (flag & 4) or ncig == 0 or rlen[i] == 0:
                end = rows[i].position + 1
            else:
                end = rows[i].position + rlen[i]
            p = _put_u32(p, <uint32_t>(offsets[i + 1] - offsets[i] - 4))
            p = _put_u32(p, <uint32_t>rows[i].ref_index)
            p = _put_u32(p, <uint32_t>rows[i].position)
            p[0] = <uint8_t>(l_name + 1)
            p[1] = _clamp_mapq(rows[i].mapq)
            p += 2
            p = _put_u16(p, <uint16_t>_reg2bin(rows[i].position, end))
            p = _put_u16(p, <uint16_t>ncig)
            p = _put_u16(p, <uint16_t>flag)
            p = _put_u32(p, <uint32_t>seq_len)
            p = _put_u32(p, <uint32_t>rows[i].next_ref_index)
            p = _put_u32(p, <uint32_t>rows[i].next_position)
            p = _put_u32(p, <uint32_t>rows[i].template_length)
            # read name, NUL-terminated
            if name_len[i] > 0:
                memcpy(p, nd + name_off[i], name_len[i])
            else:
                p[0] = 42
            p += l_name
            p[0] = 0
            p += 1
            # CIGAR ops: parsed into an aligned scratch array, then stored little-endian.
            if ncig > 0:
                _parse_cigar(cd + cig_off[i], <int64_t>(cig_off[i + 1] - cig_off[i]),
                             ops, &dummy_n, &dummy_q, &dummy_r)
                for k in range(ncig):
                    p = _put_u32(p, ops[k])
            # 4-bit sequence, reverse-complemented for reverse-strand records
            s = bd + base_off[i]
            memset(p, 0, (seq_len + 1) // 2)
            for j in range(seq_len):
                if rev:
                    code = NT16_COMP[NT16[s[seq_len - 1 - j]]]
                else:
                    code = NT16[s[j]]
                if j & 1:
                    p[j >> 1] |= code
                else:
                    p[j >> 1] = code << 4
            p += (seq_len + 1) // 2
            # qualities (Phred, no offset); 0xFF when absent
            q = qd + qual_off[i]
            ql = <int64_t>(qual_off[i + 1] - qual_off[i])
            if _is_qual_missing(q, ql):
                memset(p, 0xFF, seq_len)
            elif rev:
                for j in range(seq_len):
                    p[j] = q[seq_len - 1 - j] - 33
            else:
                for j in range(seq_len):
                    p[j] = q[j] - 33
            p += seq_len
            if rg_len > 0 and not (has_tags and orp[i]):
                p[0] = 82  # 'R'
                p[1] = 71  # 'G'
                p[2] = 90  # 'Z'
                memcpy(p + 3, rg, rg_len)
                p[3 + rg_len] = 0
                p += 4 + rg_len
            if has_tags and to[i + 1] > to[i]:
                memcpy(p, td + to[i], to[i + 1] - to[i])
    return out, np.asarray(offsets)


cdef inline uint8_t* _put_int(uint8_t* p, int64_t v) noexcept nogil:
    """Decimal text of ``v``; returns the end."""
    cdef uint8_t tmp[24]
    cdef int k = 0
    cdef uint64_t u
    if v < 0:
        p[0] = 45
        p += 1
        u = <uint64_t>(-(v + 1)) + 1
    else:
        u = <uint64_t>v
    while True:
        tmp[k] = 48 + u % 10
        k += 1
        u //= 10
        if u == 0:
            break
    while k > 0:
        k -= 1
        p[0] = tmp[k]
        p += 1
    return p


cdef inline uint8_t* _put_ref(uint8_t* p, int32_t idx, const uint8_t* ref_data, const uint64_t* ref_off) noexcept nogil:
    cdef uint64_t ln
    if idx < 0:
        p[0] = 42
        return p + 1
    ln = ref_off[idx + 1] - ref_off[idx]
    memcpy(p, ref_data + ref_off[idx], ln)
    return p + ln


def format_sam(
    const uint8_t[::1] name_data, const uint64_t[::1] name_off,
    const uint8_t[::1] base_data, const uint64_t[::1] base_off,
    const uint8_t[::1] qual_data, const uint64_t[::1] qual_off,
    object rows_array,
    const uint8_t[::1] cig_data, const uint64_t[::1] cig_off,
    const uint8_t[::1] ref_data, const uint64_t[::1] ref_off,
    bytes read_group,
    const uint8_t[::1] tag_data=None, const uint64_t[::1] tag_off=None,
):
    """Format N records as SAM text lines (each ending in ``\\n``), as ``bytes``.

    The output equals ``samtools view`` of the records :func:`encode_bam` makes
    from the same input: CIGARs are re-printed from the parsed operations, bases
    go through the nt16 alphabet, missing qualities print as ``*``, RNEXT is
    ``=`` when the mate is on the same contig. Optional fields (``tag_data``/
    ``tag_off``, BAM aux bytes) follow ``RG:Z`` in SAM syntax.
    """
    cdef const AlnRec[::1] rows = rows_array
    cdef Py_ssize_t n = rows.shape[0]
    if name_off.shape[0] != n + 1 or base_off.shape[0] != n + 1 or qual_off.shape[0] != n + 1 \
            or cig_off.shape[0] != n + 1:
        raise ValueError("column lengths differ within the chunk")
    cdef int32_t n_refs = ref_off.shape[0] - 1
    cdef int64_t[::1] name_len = np.empty(n, np.int64)
    cdef int64_t[::1] n_cigar = np.empty(n, np.int64)
    cdef int64_t[::1] rlen = np.empty(n, np.int64)
    cdef Py_ssize_t bad = 0, i
    cdef int err
    cdef const uint8_t* rg = read_group
    cdef int64_t rg_len = len(read_group)
    cdef int64_t total = 0, seq_len, k, j, ql, max_ref = 1, ncig, max_cigar = 0
    cdef uint8_t zero = 0
    cdef const uint8_t* nd = &name_data[0] if name_data.shape[0] else &zero
    cdef const uint8_t* bd = &base_data[0] if base_data.shape[0] else &zero
    cdef const uint8_t* qd = &qual_data[0] if qual_data.shape[0] else &zero
    cdef const uint8_t* cd = &cig_data[0] if cig_data.shape[0] else &zero
    cdef const uint8_t* rd = &ref_data[0] if ref_data.shape[0] else &zero
    cdef const AlnRec* rp = &rows[0] if n else NULL
    cdef uint8_t* p
    cdef const uint8_t* s
    cdef const uint8_t* q
    cdef uint32_t flag
    cdef bint rev
    cdef uint32_t* ops = NULL
    cdef int64_t dummy_q, dummy_r, dummy_n
    cdef uint32_t op

    cdef bint has_tags = tag_off is not None
    if has_tags and (tag_data is None or tag_off.shape[0] != n + 1):
        raise ValueError("column lengths differ within the chunk (tags)")
    cdef const uint8_t* td = &tag_data[0] if has_tags and tag_data.shape[0] else &zero
    cdef const uint64_t* to = &tag_off[0] if has_tags else NULL
    cdef uint64_t t_len = tag_data.shape[0] if has_tags else 0
    cdef int64_t[::1] text_len = np.empty(n if has_tags else 0, np.int64)
    cdef int64_t* tlp = &text_len[0] if has_tags and n else NULL
    cdef uint8_t[::1] own_rg = np.zeros(n if has_tags else 0, np.uint8)
    cdef uint8_t* orp = &own_rg[0] if has_tags and n else NULL

    for i in range(n_refs):
        max_ref = max(max_ref, <int64_t>(ref_off[i + 1] - ref_off[i]))

    with nogil:
        err = _measure(n, nd, &name_off[0], bd, &base_off[0], qd, &qual_off[0], rp, cd, &cig_off[0],
                       n_refs, &name_len[0], &n_cigar[0], &rlen[0], &bad)
        if err == OK and has_tags:
            err = _check_tags(n, td, to, t_len, tlp, orp, &bad)
            for i in range(n):
                total += tlp[i]
        if err == OK:
            for i in range(n):
                seq_len = <int64_t>(base_off[i + 1] - base_off[i])
                # fixed: 11 tabs + newline + 6 integers of <= 20 chars + 2 ref names
                if n_cigar[i] > max_cigar:
                    max_cigar = n_cigar[i]
                total += (name_len[i] + 1) + 12 + 6 * 20 + 2 * max_ref + n_cigar[i] * 11 + 1 \
                    + 2 * (seq_len + 1) + (rg_len + 6 if rg_len else 0)
    _check(err, bad, rows_array)

    out = np.empty(total + 1, np.uint8)
    cdef uint8_t[::1] outv = out
    cdef uint32_t[::1] cig_scratch = np.empty(max(1, max_cigar), np.uint32)
    ops = &cig_scratch[0]
    p = &outv[0]
    with nogil:
        for i in range(n):
            flag = rows[i].flag
            rev = (flag & 0x10) != 0
            seq_len = <int64_t>(base_off[i + 1] - base_off[i])
            if name_len[i] > 0:
                memcpy(p, nd + name_off[i], name_len[i])
                p += name_len[i]
            else:
                p[0] = 42
                p += 1
            p[0] = 9
            p = _put_int(p + 1, flag)
            p[0] = 9
            p = _put_ref(p + 1, rows[i].ref_index, rd, &ref_off[0])
            p[0] = 9
            p = _put_int(p + 1, <int32_t>rows[i].position + 1)
            p[0] = 9
            p = _put_int(p + 1, _clamp_mapq(rows[i].mapq))
            p[0] = 9
            p += 1
            ncig = n_cigar[i]
            if ncig == 0:
                p[0] = 42
                p += 1
            else:
                _parse_cigar(cd + cig_off[i], <int64_t>(cig_off[i + 1] - cig_off[i]),
                             ops, &dummy_n, &dummy_q, &dummy_r)
                for k in range(ncig):
                    op = ops[k]
                    p = _put_int(p, op >> 4)
                    p[0] = CIGAR_CHARS[op & 0xF]
                    p += 1
            p[0] = 9
            p += 1
            if rows[i].next_ref_index >= 0 and rows[i].next_ref_index == rows[i].ref_index:
                p[0] = 61  # '='
                p += 1
            else:
                p = _put_ref(p, rows[i].next_ref_index, rd, &ref_off[0])
            p[0] = 9
            p = _put_int(p + 1, <int32_t>rows[i].next_position + 1)
            p[0] = 9
            p = _put_int(p + 1, <int32_t>rows[i].template_length)
            p[0] = 9
            p += 1
            s = bd + base_off[i]
            if seq_len == 0:
                p[0] = 42
                p += 1
            else:
                for j in range(seq_len):
                    if rev:
                        p[j] = NT16_CHARS[NT16_COMP[NT16[s[seq_len - 1 - j]]]]
                    else:
                        p[j] = NT16_CHARS[NT16[s[j]]]
                p += seq_len
            p[0] = 9
            p += 1
            q = qd + qual_off[i]
            ql = <int64_t>(qual_off[i + 1] - qual_off[i])
            if seq_len == 0 or _is_qual_missing(q, ql):
                p[0] = 42
                p += 1
            else:
                for j in range(seq_len):
                    p[j] = q[seq_len - 1 - j] if rev else q[j]
                p += seq_len
            if rg_len > 0 and not (has_tags and orp[i]):
                memcpy(p, b"\tRG:Z:", 6)
                memcpy(p + 6, rg, rg_len)
                p += 6 + rg_len
            if has_tags and to[i + 1] > to[i]:
                p = _aux_text(td + to[i], <int64_t>(to[i + 1] - to[i]), p)
            p[0] = 10
            p += 1
    used = p - &outv[0]
    return out[:used].tobytes()


def names_sorted(const uint8_t[::1] name_data, const uint64_t[::1] name_off, bytes previous):
    """Are the read names (up to the first whitespace) in non-decreasing byte order?

    ``previous`` is the last name of the preceding chunk (``b""`` for none).
    Returns ``(sorted, last_name)``; this is the order Picard/htsjdk checks for
    ``SO:queryname`` (String.compareTo on ASCII names).
    """
    cdef Py_ssize_t n = name_off.shape[0] - 1, i
    cdef uint8_t zero = 0
    cdef const uint8_t* nd = &name_data[0] if name_data.shape[0] else &zero
    cdef const uint8_t* prev = previous
    cdef int64_t prev_len = len(previous), cur_len, k, m
    cdef const uint8_t* cur
    cdef bint ok = True
    cdef int c
    with nogil:
        for i in range(n):
            cur = nd + name_off[i]
            cur_len = 0
            m = <int64_t>(name_off[i + 1] - name_off[i])
            while cur_len < m and cur[cur_len] != 32 and cur[cur_len] != 9:
                cur_len += 1
            if i > 0 or prev_len > 0:
                c = 0
                k = 0
                while k < cur_len and k < prev_len and c == 0:
                    c = <int>prev[k] - <int>cur[k]
                    k += 1
                if c > 0 or (c == 0 and prev_len > cur_len):
                    ok = False
                    break
            prev = cur
            prev_len = cur_len
    if n == 0:
        return ok, previous
    last = bytes(name_data[name_off[n - 1]:name_off[n]]).split(None, 1)
    return ok, (last[0] if last else b"")
