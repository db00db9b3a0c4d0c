# cython: language_level=3
"""proto3 ``Alignment`` records (AGD ``results`` / ``secondary<N>`` columns) <-> arrays.

The message (``protos/persona/agd/v1/alignment.proto``)::

    Position  { int32 ref_index = 1; int64 position = 2; }
    Alignment { uint32 flag = 1; int32 mapping_quality = 2; Position position = 3;
                Position next_position = 4; int64 template_length = 5; string cigar = 6; }

Encoding writes exactly what protobuf's ``SerializeToString`` writes for a
message whose ``position`` and ``next_position`` are *set* (the original's
writers always call ``mutable_position()`` / ``mutable_next_position()``, so
both sub-messages are always present, possibly empty): fields in number order,
proto3 default (zero / empty) scalars omitted, negative int32/int64 as 10-byte
two's-complement varints (no zigzag).

Decoding accepts any valid encoding: fields in any order, repeated occurrences
(last scalar wins, sub-messages merge), unknown fields and groups skipped, a
known field with an unexpected wire type skipped as unknown (as protobuf does).
An absent sub-message or field reads as 0. Strings are not checked for UTF-8.

An *absent* row ("no alignment", ``present[i]`` false) is encoded as a
zero-length record. A real message is never empty (its two position
sub-messages are always written), so the two cannot be confused; decoding
leaves telling them apart to the caller (``offsets`` differences of 0).

Rows use the layout of ``persona.agd.records.ALIGNMENT_DTYPE`` (packed, 40 bytes).
"""
import numpy as np

from libc.stdint cimport uint8_t, uint32_t, int32_t, int64_t, uint64_t
from libc.string cimport memcpy

from alignment_row cimport AlnRec

ROW_DTYPE = np.dtype(
    [
        ("flag", np.uint32),
        ("mapq", np.int32),
        ("ref_index", np.int32),
        ("position", np.int64),
        ("next_ref_index", np.int32),
        ("next_position", np.int64),
        ("template_length", np.int64),
    ]
)
assert ROW_DTYPE.itemsize == sizeof(AlnRec)

# decode error codes
cdef enum:
    OK = 0
    E_TRUNC_VARINT = 1
    E_LONG_VARINT = 2
    E_TRUNC_FIELD = 3
    E_FIELD_ZERO = 4
    E_WIRE_TYPE = 5
    E_GROUP = 6

_ERRORS = {
    E_TRUNC_VARINT: "truncated varint",
    E_LONG_VARINT: "varint longer than 10 bytes",
    E_TRUNC_FIELD: "field extends past the end of the record",
    E_FIELD_ZERO: "field number 0",
    E_WIRE_TYPE: "invalid wire type",
    E_GROUP: "unbalanced or too deeply nested group",
}


cdef inline int _varint_size(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline uint8_t* _put_varint(uint8_t* p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <uint8_t>(v | 0x80)
        v >>= 7
        p += 1
    p[0] = <uint8_t>v
    return p + 1


cdef inline int _pos_size(int32_t ref, int64_t pos) noexcept nogil:
    cdef int n = 0
    if ref != 0:
        n += 1 + _varint_size(<uint64_t><int64_t>ref)
    if pos != 0:
        n += 1 + _varint_size(<uint64_t>pos)
    return n


cdef inline uint8_t* _put_pos(uint8_t* p, uint8_t tag, int32_t ref, int64_t pos) noexcept nogil:
    p[0] = tag
    p = _put_varint(p + 1, <uint64_t>_pos_size(ref, pos))
    if ref != 0:
        p[0] = 0x08
        p = _put_varint(p + 1, <uint64_t><int64_t>ref)
    if pos != 0:
        p[0] = 0x10
        p = _put_varint(p + 1, <uint64_t>pos)
    return p


cdef inline uint64_t _record_size(const AlnRec* r, uint64_t cig_len) noexcept nogil:
    cdef uint64_t n = 0
    cdef int s
    if r.flag != 0:
        n += 1 + _varint_size(r.flag)
    if r.mapq != 0:
        n += 1 + _varint_size(<uint64_t><int64_t>r.mapq)
    s = _pos_size(r.ref_index, r.position)
    n += 1 + _varint_size(s) + s
    s = _pos_size(r.next_ref_index, r.next_position)
    n += 1 + _varint_size(s) + s
    if r.template_length != 0:
        n += 1 + _varint_size(<uint64_t>r.template_length)
    if cig_len != 0:
        n += 1 + _varint_size(cig_len) + cig_len
    return n


def encode_alignments(fields, const uint64_t[::1] cig_offsets, const uint8_t[::1] cig_data, present=None):
    """Serialize N rows (``ROW_DTYPE``) + N CIGARs into N ``Alignment`` records.

    ``present`` (bool[N], optional: all rows by default) marks the rows that
    hold an alignment; the others become zero-length records.
    Returns ``(offsets uint64[N+1], data uint8[])`` of the encoded column.
    """
    fields = np.ascontiguousarray(fields)
    if fields.dtype != ROW_DTYPE:
        raise ValueError(f"fields must have dtype {ROW_DTYPE}, got {fields.dtype}")
    cdef Py_ssize_t n = fields.shape[0], i
    if cig_offsets.shape[0] != n + 1:
        raise ValueError(f"{n} rows but {cig_offsets.shape[0] - 1} CIGARs")
    if cig_offsets[n] != <uint64_t>cig_data.shape[0]:
        raise ValueError("CIGAR offsets do not end at the CIGAR data size")
    if present is None:
        present = np.ones(n, dtype=np.uint8)
    else:
        present = np.ascontiguousarray(present, dtype=np.bool_).view(np.uint8)
        if present.shape != (n,):
            raise ValueError(f"{n} rows but {present.shape[0]} present flags")
    cdef const uint8_t[::1] keep = present
    cdef const uint8_t[::1] raw = fields.view(np.uint8).reshape(-1)
    cdef const AlnRec* rows = <const AlnRec*>&raw[0] if n > 0 else NULL
    cdef const uint8_t* cig = &cig_data[0] if cig_data.shape[0] > 0 else NULL
    out_offsets = np.empty(n + 1, dtype=np.uint64)
    cdef uint64_t[::1] oo = out_offsets
    cdef uint64_t cl
    with nogil:
        oo[0] = 0
        for i in range(n):
            oo[i + 1] = oo[i] + (_record_size(&rows[i], cig_offsets[i + 1] - cig_offsets[i]) if keep[i] else 0)
    out = np.empty(oo[n], dtype=np.uint8)
    cdef uint8_t[::1] od = out
    cdef uint8_t* p = &od[0] if od.shape[0] > 0 else NULL
    cdef const AlnRec* r
    with nogil:
        for i in range(n):
            if not keep[i]:
                continue
            r = &rows[i]
            if r.flag != 0:
                p[0] = 0x08
                p = _put_varint(p + 1, r.flag)
            if r.mapq != 0:
                p[0] = 0x10
                p = _put_varint(p + 1, <uint64_t><int64_t>r.mapq)
            p = _put_pos(p, 0x1A, r.ref_index, r.position)
            p = _put_pos(p, 0x22, r.next_ref_index, r.next_position)
            if r.template_length != 0:
                p[0] = 0x28
                p = _put_varint(p + 1, <uint64_t>r.template_length)
            cl = cig_offsets[i + 1] - cig_offsets[i]
            if cl != 0:
                p[0] = 0x32
                p = _put_varint(p + 1, cl)
                memcpy(p, cig + cig_offsets[i], cl)
                p += cl
    return out_offsets, out


cdef inline int _get_varint(const uint8_t** pp, const uint8_t* end, uint64_t* out) noexcept nogil:
    cdef const uint8_t* p = pp[0]
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    while True:
        if p >= end:
            return E_TRUNC_VARINT
        if shift >= 70:
            return E_LONG_VARINT
        b = p[0]
        p += 1
        v |= (<uint64_t>(b & 0x7F)) << shift if shift < 64 else 0
        shift += 7
        if b < 0x80:
            break
    pp[0] = p
    out[0] = v
    return OK


cdef int _skip(const uint8_t** pp, const uint8_t* end, uint64_t tag) noexcept nogil:
    """Skip the value of a field whose tag was just read (groups included)."""
    cdef uint64_t v
    cdef int err, depth = 0
    cdef uint64_t stack[64]
    cdef uint32_t wt = tag & 7
    while True:
        if wt == 0:
            err = _get_varint(pp, end, &v)
            if err:
                return err
        elif wt == 1:
            if <uint64_t>(end - pp[0]) < 8:
                return E_TRUNC_FIELD
            pp[0] += 8
        elif wt == 5:
            if <uint64_t>(end - pp[0]) < 4:
                return E_TRUNC_FIELD
            pp[0] += 4
        elif wt == 2:
            err = _get_varint(pp, end, &v)
            if err:
                return err
            if v > <uint64_t>(end - pp[0]):
                return E_TRUNC_FIELD
            pp[0] += v
        elif wt == 3:
            if depth == 64:
                return E_GROUP
            stack[depth] = tag >> 3
            depth += 1
        elif wt == 4:
            if depth == 0 or stack[depth - 1] != (tag >> 3):
                return E_GROUP
            depth -= 1
        else:
            return E_WIRE_TYPE
        if depth == 0:
            return OK
        err = _get_varint(pp, end, &tag)  # next tag inside the group
        if err:
            return E_GROUP if err == E_TRUNC_VARINT else err
        if (tag >> 3) == 0:
            return E_FIELD_ZERO
        wt = tag & 7


cdef int _parse_position(const uint8_t* p, const uint8_t* end, int32_t* ref, int64_t* pos) noexcept nogil:
    cdef uint64_t tag, v
    cdef int err
    while p < end:
        err = _get_varint(&p, end, &tag)
        if err:
            return err
        if (tag >> 3) == 0:
            return E_FIELD_ZERO
        if tag == 0x08:
            err = _get_varint(&p, end, &v)
            if err:
                return err
            ref[0] = <int32_t>v
        elif tag == 0x10:
            err = _get_varint(&p, end, &v)
            if err:
                return err
            pos[0] = <int64_t>v
        else:
            err = _skip(&p, end, tag)
            if err:
                return err
    return OK


cdef int _parse_record(const uint8_t* p, const uint8_t* end, AlnRec* r,
                       const uint8_t** cig, uint64_t* cig_len) noexcept nogil:
    cdef uint64_t tag, v
    cdef int err
    cdef int32_t ref
    cdef int64_t pos
    while p < end:
        err = _get_varint(&p, end, &tag)
        if err:
            return err
        if (tag >> 3) == 0:
            return E_FIELD_ZERO
        if tag == 0x08:
            err = _get_varint(&p, end, &v)
            if err:
                return err
            r.flag = <uint32_t>v
        elif tag == 0x10:
            err = _get_varint(&p, end, &v)
            if err:
                return err
            r.mapq = <int32_t>v
        elif tag == 0x28:
            err = _get_varint(&p, end, &v)
            if err:
                return err
            r.template_length = <int64_t>v
        elif tag == 0x1A or tag == 0x22 or tag == 0x32:
            err = _get_varint(&p, end, &v)
            if err:
                return err
            if v > <uint64_t>(end - p):
                return E_TRUNC_FIELD
            if tag == 0x32:
                cig[0] = p
                cig_len[0] = v
            elif tag == 0x1A:
                ref = r.ref_index
                pos = r.position
                err = _parse_position(p, p + v, &ref, &pos)
                r.ref_index = ref
                r.position = pos
            else:
                ref = r.next_ref_index
                pos = r.next_position
                err = _parse_position(p, p + v, &ref, &pos)
                r.next_ref_index = ref
                r.next_position = pos
            if err:
                return err
            p += v
        else:
            err = _skip(&p, end, tag)
            if err:
                return err
    return OK


def decode_alignments(const uint64_t[::1] offsets, const uint8_t[::1] data):
    """Parse N ``Alignment`` records. Returns ``(fields ROW_DTYPE[N], cig_offsets, cig_data)``.

    Raises ``ValueError`` naming the record index on malformed input.
    """
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    if n < 0:
        raise ValueError("offsets must have N+1 entries")
    if offsets[n] != <uint64_t>data.shape[0]:
        raise ValueError(f"offsets end at {offsets[n]} but data has {data.shape[0]} bytes")
    fields = np.zeros(n, dtype=ROW_DTYPE)
    cdef uint8_t[::1] raw = fields.view(np.uint8).reshape(-1)
    cdef AlnRec* rows = <AlnRec*>&raw[0] if n > 0 else NULL
    cdef const uint8_t* src = &data[0] if data.shape[0] > 0 else NULL
    cig_start = np.zeros(n, dtype=np.uint64)
    cig_offsets = np.zeros(n + 1, dtype=np.uint64)
    cdef uint64_t[::1] cs = cig_start
    cdef uint64_t[::1] co = cig_offsets
    cdef const uint8_t* cig
    cdef uint64_t cig_len
    cdef int err = OK
    cdef Py_ssize_t err_record = -1
    with nogil:
        for i in range(n):
            cig = src
            cig_len = 0
            err = _parse_record(src + offsets[i], src + offsets[i + 1], &rows[i], &cig, &cig_len)
            if err:
                err_record = i
                break
            cs[i] = <uint64_t>(cig - src)
            co[i + 1] = co[i] + cig_len
    if err:
        raise ValueError(f"record {err_record}: malformed Alignment message: {_ERRORS[err]}")
    cig_data = np.empty(co[n], dtype=np.uint8)
    cdef uint8_t[::1] cd = cig_data
    cdef uint8_t* dst = &cd[0] if cd.shape[0] > 0 else NULL
    with nogil:
        for i in range(n):
            memcpy(dst + co[i], src + cs[i], co[i + 1] - co[i])
    return fields, cig_offsets, cig_data
