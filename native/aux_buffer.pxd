# Growable byte buffers and the SAM text/BAM aux writers both aligner kernels (mm2.pyx, snap.pyx) fill
# their CIGAR and tag columns with. Inline functions only: cimporting this adds no runtime module.
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy

cdef struct Buf:  # a growable byte buffer (one column's CIGAR text or BAM aux bytes)
    uint8_t *data
    size_t len
    size_t cap


cdef inline int _reserve(Buf *b, size_t extra) noexcept nogil:
    """Room for ``extra`` more bytes (-1 when out of memory; the buffer is then unchanged)."""
    cdef size_t cap
    cdef uint8_t *p
    if b.len + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.len + extra:
        cap *= 2
    p = <uint8_t*>realloc(b.data, cap)
    if p == NULL:
        return -1
    b.data = p
    b.cap = cap
    return 0


cdef inline void _put_uint(Buf *b, uint32_t v) noexcept nogil:
    """Decimal text of ``v`` (room reserved by the caller: at most 10 bytes)."""
    cdef uint8_t tmp[12]
    cdef int n = 0
    while True:
        tmp[n] = <uint8_t>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n > 0:
        n -= 1
        b.data[b.len] = tmp[n]
        b.len += 1


cdef inline void _put_char(Buf *b, uint8_t c) noexcept nogil:
    b.data[b.len] = c
    b.len += 1


cdef inline void _tag(Buf *b, const char *tag, uint8_t typ) noexcept nogil:
    """A BAM aux field's two-letter tag and type byte (room reserved by the caller)."""
    b.data[b.len] = <uint8_t>tag[0]
    b.data[b.len + 1] = <uint8_t>tag[1]
    b.data[b.len + 2] = typ
    b.len += 3


cdef inline int _aux_int(Buf *b, const char *tag, int64_t v) noexcept nogil:
    """An integer tag in the smallest BAM type, as htslib stores a SAM ``i`` value."""
    cdef int size
    cdef uint8_t typ
    cdef uint32_t u = <uint32_t>v
    if _reserve(b, 7) < 0:
        return -1
    if v < 0:
        if v >= -128:
            typ, size = 99, 1  # 'c'
        elif v >= -32768:
            typ, size = 115, 2  # 's'
        else:
            typ, size = 105, 4  # 'i'
    else:
        if v <= 255:
            typ, size = 67, 1  # 'C'
        elif v <= 65535:
            typ, size = 83, 2  # 'S'
        else:
            typ, size = 73, 4  # 'I'
    _tag(b, tag, typ)
    b.data[b.len] = u & 0xff
    if size > 1:
        b.data[b.len + 1] = (u >> 8) & 0xff
    if size > 2:
        b.data[b.len + 2] = (u >> 16) & 0xff
        b.data[b.len + 3] = (u >> 24) & 0xff
    b.len += size
    return 0


cdef inline int _aux_char(Buf *b, const char *tag, uint8_t c) noexcept nogil:
    if _reserve(b, 4) < 0:
        return -1
    _tag(b, tag, 65)  # 'A'
    b.data[b.len] = c
    b.len += 1
    return 0


cdef inline int _aux_float(Buf *b, const char *tag, float f) noexcept nogil:
    cdef uint32_t u
    if _reserve(b, 7) < 0:
        return -1
    memcpy(&u, &f, 4)
    _tag(b, tag, 102)  # 'f'
    b.data[b.len] = u & 0xff
    b.data[b.len + 1] = (u >> 8) & 0xff
    b.data[b.len + 2] = (u >> 16) & 0xff
    b.data[b.len + 3] = (u >> 24) & 0xff
    b.len += 4
    return 0


# -- MD:Z text (SAM's grammar: a number first and last, a number between any two mismatches/deletions) --

cdef inline void _md_mismatch(Buf *b, uint32_t matched, uint8_t ref_base) noexcept nogil:
    """``matched`` bases then the reference base of a mismatch (room reserved by the caller)."""
    _put_uint(b, matched)
    _put_char(b, ref_base)


cdef inline void _md_deletion(Buf *b, uint32_t matched) noexcept nogil:
    """``matched`` bases then ``^``; the caller puts the deleted reference bases after it."""
    _put_uint(b, matched)
    _put_char(b, 94)  # '^'


cdef inline void _md_end(Buf *b, uint32_t matched) noexcept nogil:
    """The last matched run and the Z string's terminating NUL."""
    _put_uint(b, matched)
    _put_char(b, 0)
