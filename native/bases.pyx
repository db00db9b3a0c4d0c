# cython: language_level=3
"""3-bit compacted bases (AGD ``COMPACTED_BASES``) and base/quality transforms.

Layout (byte-compatible with the original AGD v0.1): each record is an array of
little-endian ``uint64`` words; a word holds 21 bases, base *i* in bits
``[3i, 3i+3)`` (bit 63 unused). Codes: A=0, C=1, T=2, G=3, N=4, END=7 (5 and 6
are invalid). After the last base an END code is written in the next slot, so a
record of L bases takes ``L // 21 + 1`` words (a multiple of 21 gets a word that
holds only END).

Every function works on a whole column at once, given as ``(offsets, data)``:
``offsets`` is ``uint64[N+1]`` (absolute, ``offsets[0] == 0``), ``data`` is
``uint8`` -- the layout of :class:`persona.agd.ragged.RaggedArray`. The loops run
without the GIL. Inputs may be read-only (e.g. views of a decompressed buffer).
"""
import sys

import numpy as np

from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memcpy

if sys.byteorder != "little":  # words are stored as host uint64 below
    raise ImportError("persona._native.bases needs a little-endian machine")

BASES_PER_WORD = 21
END_CODE = 7

cdef uint8_t ENC[256]       # text byte -> code 0..4, 0xFF for invalid
cdef uint8_t DEC[8]         # code -> uppercase base, 0 for invalid / END
cdef uint8_t COMP[256]      # text byte -> its complement (other bytes unchanged)

cdef void _init_tables():
    cdef int i
    for i in range(256):
        ENC[i] = 0xFF
        COMP[i] = <uint8_t>i
    for i in range(8):
        DEC[i] = 0
    cdef bytes alphabet = b"ACTGN"
    for i in range(5):
        ENC[alphabet[i]] = <uint8_t>i
        ENC[alphabet[i] + 32] = <uint8_t>i   # lowercase
        DEC[i] = alphabet[i]
    cdef bytes fwd = b"ACGTNacgtn"
    cdef bytes rev = b"TGCANtgcan"
    for i in range(10):
        COMP[fwd[i]] = rev[i]

_init_tables()


cdef inline void _store_word(uint8_t* dst, uint64_t word) noexcept nogil:
    memcpy(dst, &word, 8)


cdef inline uint64_t _load_word(const uint8_t* src) noexcept nogil:
    cdef uint64_t word
    memcpy(&word, src, 8)
    return word


def packed_size(const uint64_t[::1] offsets):
    """Offsets (``uint64[N+1]``) of the packed form of records with these text offsets."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    out = np.empty(n + 1, dtype=np.uint64)
    cdef uint64_t[::1] oo = out
    with nogil:
        oo[0] = 0
        for i in range(n):
            oo[i + 1] = oo[i] + 8 * ((offsets[i + 1] - offsets[i]) // 21 + 1)
    return out


def pack_bases(const uint64_t[::1] offsets, const uint8_t[::1] data):
    """Pack text bases (A,C,G,T,N, either case) into 3-bit words.

    Returns ``(offsets, data)`` of the packed column (record sizes are multiples
    of 8). Raises ``ValueError`` naming the record and the character if a record
    holds anything else.
    """
    cdef Py_ssize_t n = offsets.shape[0] - 1
    if n < 0:
        raise ValueError("offsets must have N+1 entries")
    out_offsets = packed_size(offsets)
    cdef const uint64_t[::1] oo = out_offsets
    out = np.empty(oo[n], dtype=np.uint8)
    cdef uint8_t[::1] od = out
    cdef const uint8_t* src = &data[0] if data.shape[0] > 0 else NULL
    cdef uint8_t* dst = &od[0] if od.shape[0] > 0 else NULL
    cdef Py_ssize_t i, bad_record = -1
    cdef uint64_t start, length, k, full, rem, j, word
    cdef uint8_t code, bad
    cdef const uint8_t* p
    cdef uint8_t* q
    with nogil:
        for i in range(n):
            start = offsets[i]
            length = offsets[i + 1] - start
            p = src + start
            q = dst + oo[i]
            full = length // 21
            rem = length - full * 21
            bad = 0
            for k in range(full):
                word = 0
                for j in range(21):
                    code = ENC[p[j]]
                    bad |= code
                    word |= (<uint64_t>code) << (3 * j)
                _store_word(q, word)
                p += 21
                q += 8
            word = 0
            for j in range(rem):
                code = ENC[p[j]]
                bad |= code
                word |= (<uint64_t>code) << (3 * j)
            word |= (<uint64_t>7) << (3 * rem)
            _store_word(q, word)
            if bad & 0x80:
                bad_record = i
                break
    if bad_record >= 0:
        rec = np.asarray(data)[offsets[bad_record]:offsets[bad_record + 1]].tobytes()
        for pos, ch in enumerate(rec):
            if ENC[ch] == 0xFF:
                raise ValueError(
                    f"record {bad_record}: invalid base {chr(ch)!r} (byte {ch}) at position {pos}; "
                    "expected A, C, G, T or N"
                )
    return out_offsets, out


def unpack_bases(const uint64_t[::1] offsets, const uint8_t[::1] data):
    """Unpack 3-bit words into uppercase text bases.

    Returns ``(offsets, data)`` of the text column. Raises ``ValueError`` naming
    the record if a record's size is not a positive multiple of 8, holds code 5 or
    6, has an END before its last word, or has no END in its last word.
    """
    cdef Py_ssize_t n = offsets.shape[0] - 1
    if n < 0:
        raise ValueError("offsets must have N+1 entries")
    out_offsets = np.empty(n + 1, dtype=np.uint64)
    cdef uint64_t[::1] oo = out_offsets
    cdef const uint8_t* src = &data[0] if data.shape[0] > 0 else NULL
    cdef Py_ssize_t i, err_record = -1
    cdef int err = 0
    cdef uint64_t start, length, words, k, j, word, code, tail
    # pass 1: text length of every record, from the END slot of its last word
    with nogil:
        oo[0] = 0
        for i in range(n):
            start = offsets[i]
            length = offsets[i + 1] - start
            if length == 0 or (length & 7) != 0:
                err = 1
                err_record = i
                break
            words = length >> 3
            word = _load_word(src + start + length - 8)
            tail = 21
            for j in range(21):
                if ((word >> (3 * j)) & 7) == 7:
                    tail = j
                    break
            if tail == 21:
                err = 2
                err_record = i
                break
            oo[i + 1] = oo[i] + 21 * (words - 1) + tail
    if err == 1:
        raise ValueError(
            f"record {err_record}: packed size {offsets[err_record + 1] - offsets[err_record]} bytes "
            "is not a positive multiple of 8"
        )
    if err == 2:
        raise ValueError(f"record {err_record}: no END code in the last word of packed bases")
    out = np.empty(oo[n], dtype=np.uint8)
    cdef uint8_t[::1] od = out
    cdef uint8_t* dst = &od[0] if od.shape[0] > 0 else NULL
    cdef uint8_t* q
    cdef const uint8_t* p
    cdef uint8_t ch, bad
    cdef uint64_t bad_code = 0
    # pass 2: decode; any invalid code (5, 6, or END before the last word) -> error
    with nogil:
        for i in range(n):
            start = offsets[i]
            words = (offsets[i + 1] - start) >> 3
            p = src + start
            q = dst + oo[i]
            bad = 0
            for k in range(words - 1):
                word = _load_word(p)
                for j in range(21):
                    ch = DEC[word & 7]
                    bad |= (ch == 0)
                    q[j] = ch
                    word >>= 3
                p += 8
                q += 21
            word = _load_word(p)
            tail = oo[i + 1] - oo[i] - 21 * (words - 1)
            for j in range(tail):
                ch = DEC[word & 7]
                bad |= (ch == 0)
                q[j] = ch
                word >>= 3
            if bad:
                err_record = i
                break
    if err_record >= 0:
        raw = np.frombuffer(np.asarray(data)[offsets[err_record]:offsets[err_record + 1]].tobytes(), dtype="<u8")
        for w_i, w in enumerate(raw.tolist()):
            for j in range(21):
                code = (w >> (3 * j)) & 7
                if code == 7:
                    if w_i < raw.size - 1:
                        raise ValueError(
                            f"record {err_record}: END code in word {w_i} before the last word {raw.size - 1}"
                        )
                    break
                if code > 4:
                    raise ValueError(
                        f"record {err_record}: invalid base code {code} in word {w_i}, slot {j}"
                    )
        raise ValueError(f"record {err_record}: invalid packed bases")
    return out_offsets, out


def _transform(const uint64_t[::1] offsets, const uint8_t[::1] data, mask, bint complement):
    cdef Py_ssize_t n = offsets.shape[0] - 1
    if n < 0:
        raise ValueError("offsets must have N+1 entries")
    if <uint64_t>data.shape[0] != offsets[n]:
        raise ValueError(f"offsets end at {offsets[n]} but data has {data.shape[0]} bytes")
    cdef const uint8_t[::1] m
    cdef bint use_mask = mask is not None
    if use_mask:
        m = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8)
        if m.shape[0] != n:
            raise ValueError(f"mask has {m.shape[0]} entries for {n} records")
    out = np.empty(data.shape[0], dtype=np.uint8)
    cdef uint8_t[::1] od = out
    cdef const uint8_t* src = &data[0] if data.shape[0] > 0 else NULL
    cdef uint8_t* dst = &od[0] if od.shape[0] > 0 else NULL
    cdef Py_ssize_t i
    cdef uint64_t start, length, k
    with nogil:
        for i in range(n):
            start = offsets[i]
            length = offsets[i + 1] - start
            if use_mask and not m[i]:
                memcpy(dst + start, src + start, length)
            elif complement:
                for k in range(length):
                    dst[start + length - 1 - k] = COMP[src[start + k]]
            else:
                for k in range(length):
                    dst[start + length - 1 - k] = src[start + k]
    return out


def reverse_complement(const uint64_t[::1] offsets, const uint8_t[::1] data, mask=None):
    """Reverse-complement every record of a text-bases column (the offsets stay valid).

    A<->T, C<->G, N->N, case kept; other bytes are only moved. With ``mask`` (bool
    per record) only the records where it is true are transformed, the others
    are copied -- e.g. ``mask = flags & 0x10`` for SAM export.
    """
    return _transform(offsets, data, mask, True)


def reverse_records(const uint64_t[::1] offsets, const uint8_t[::1] data, mask=None):
    """Reverse every record (e.g. qualities of reverse-strand reads); ``mask`` as above."""
    return _transform(offsets, data, mask, False)
