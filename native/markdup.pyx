# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Duplicate-marking kernels (GIL released): per-read ends as Picard MarkDuplicates computes them
(see :mod:`persona.apps.markdup`).

:func:`read_ends` gives, per primary record: the unclipped 5' coordinate (0-based; forward: the
alignment start minus leading S/H clips; reverse: the alignment end plus trailing S/H clips), the
duplicate score (Picard's SUM_OF_BASE_QUALITIES: the sum of base qualities >= 15, capped at
16383, minus 16384 for a QC-failed read, as a Java short) and a 64-bit hash of the read name
as exported (FNV-1a; up to the first whitespace, without a /1 /2 suffix on paired reads), used to
find mates.
"""
from libc.stdint cimport uint8_t, uint32_t, int16_t, int32_t, int64_t, uint64_t

import numpy as np
cimport numpy as cnp

cnp.import_array()


cdef inline bint _consumes_ref(uint8_t op) noexcept nogil:
    return op == 77 or op == 68 or op == 78 or op == 61 or op == 88  # M D N = X


def read_ends(const uint32_t[:] flag, const int64_t[:] pos,
              const uint64_t[:] cig_off, const uint8_t[:] cig,
              const uint64_t[:] qual_off, const uint8_t[:] qual,
              const uint64_t[:] name_off, const uint8_t[:] name):
    """``(coord5 int64, score int16, name_hash uint64, loc int16[n, 3])`` per record (see the module
    docstring); ``loc`` is the (tile, x, y) Picard's default READ_NAME_REGEX parser finds in the name (5 or 7
    ':'-separated fields, the last three read as leading integers; x and y stored as Java shorts), -1 when
    the name has none."""
    cdef Py_ssize_t n = flag.shape[0], i
    if pos.shape[0] != n or cig_off.shape[0] != n + 1 or qual_off.shape[0] != n + 1 or name_off.shape[0] != n + 1:
        raise ValueError("columns differ in length")
    coord = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.int16)
    hashes = np.empty(n, dtype=np.uint64)
    loc = np.full((n, 3), -1, dtype=np.int16)
    cdef int16_t[:, :] lo = loc
    cdef int64_t fields, f, fs[3], fe[3], v, sign, j
    cdef int64_t[:] co = coord
    cdef int16_t[:] sc = score
    cdef uint64_t[:] hs = hashes
    cdef int64_t s, e, k, num, lead, trail, reflen, total
    cdef uint8_t c, op
    cdef bint seen_non_clip
    cdef uint64_t h
    cdef int bad = -1
    with nogil:
        for i in range(n):
            # CIGAR: leading clips, reference length, trailing clips
            s = <int64_t>cig_off[i]
            e = <int64_t>cig_off[i + 1]
            lead = 0
            trail = 0
            reflen = 0
            num = 0
            seen_non_clip = False
            k = s
            while k < e:
                c = cig[k]
                if c >= 48 and c <= 57:
                    num = num * 10 + (c - 48)
                else:
                    op = c
                    if op == 83 or op == 72:  # S H
                        if seen_non_clip:
                            trail += num
                        else:
                            lead += num
                    else:
                        if seen_non_clip is False:
                            seen_non_clip = True
                        trail = 0  # clips before a non-clip op are not trailing
                        if _consumes_ref(op):
                            reflen += num
                    num = 0
                k += 1
            if flag[i] & 0x10:
                co[i] = pos[i] + (reflen - 1 if reflen > 0 else 0) + trail
            else:
                co[i] = pos[i] - lead
            # score
            total = 0
            s = <int64_t>qual_off[i]
            e = <int64_t>qual_off[i + 1]
            if not (e - s == 1 and qual[s] == 42):
                for k in range(s, e):
                    if qual[k] >= 33 + 15:
                        total += qual[k] - 33
            if total > 16383:
                total = 16383
            if flag[i] & 0x200:
                total -= 16384
            sc[i] = <int16_t>total
            # name hash
            s = <int64_t>name_off[i]
            e = <int64_t>name_off[i + 1]
            k = s
            while k < e and name[k] != 32 and name[k] != 9:
                k += 1
            if (flag[i] & 1) and k - s > 2 and name[k - 2] == 47 and (name[k - 1] == 49 or name[k - 1] == 50):
                k -= 2
            # Picard's location: the last three ':' fields of a name of 5 or 7 fields
            fields = 1
            f = 0
            e = k
            j = k - 1
            while j >= s:
                if name[j] == 58:
                    if f < 3:
                        fs[2 - f] = j + 1
                        fe[2 - f] = e
                        f += 1
                        e = j
                    fields += 1
                j -= 1
            if f < 3 and f >= 0:
                if f == 2:
                    fs[0] = s
                    fe[0] = e
            if (fields == 5 or fields == 7):
                for f in range(3):
                    v = 0
                    sign = 1
                    j = fs[f]
                    if j < fe[f] and name[j] == 45:
                        sign = -1
                        j += 1
                    while j < fe[f] and name[j] >= 48 and name[j] <= 57:
                        v = v * 10 + (name[j] - 48)
                        j += 1
                    lo[i, f] = <int16_t>(<int32_t>(sign * v))
            h = 14695981039346656037ULL
            while s < k:
                h = (h ^ name[s]) * 1099511628211ULL
                s += 1
            hs[i] = h
    return coord, score, hashes, loc


def first_max_groups(const int64_t[:] group_start, const int16_t[:] score, uint8_t[:] keep):
    """For each group ``[group_start[g], group_start[g+1])`` of consecutive entries, set ``keep`` to 1
    for the first entry with the highest score (Picard: ``score > max || best == null``), 0 for the others."""
    cdef Py_ssize_t ng = group_start.shape[0] - 1, g, j, best
    cdef int16_t m
    with nogil:
        for g in range(ng):
            best = group_start[g]
            m = score[best]
            for j in range(group_start[g], group_start[g + 1]):
                keep[j] = 0
                if score[j] > m:
                    m = score[j]
                    best = j
            keep[best] = 1


def reference_lengths(const uint64_t[:] cig_off, const uint8_t[:] cig):
    """``int64`` reference length of each record's CIGAR (M, D, N, =, X operations), 0 without one."""
    cdef Py_ssize_t n = cig_off.shape[0] - 1, i
    out = np.zeros(max(n, 0), dtype=np.int64)
    cdef int64_t[:] o = out
    cdef int64_t num, total, k
    cdef uint8_t c
    with nogil:
        for i in range(n):
            num = 0
            total = 0
            for k in range(<int64_t>cig_off[i], <int64_t>cig_off[i + 1]):
                c = cig[k]
                if c >= 48 and c <= 57:
                    num = num * 10 + (c - 48)
                else:
                    if _consumes_ref(c):
                        total += num
                    num = 0
            o[i] = total
    return out


cdef inline int64_t _aux_size(uint8_t t) noexcept nogil:
    if t == 65 or t == 99 or t == 67:  # A c C
        return 1
    if t == 115 or t == 83:  # s S
        return 2
    if t == 105 or t == 73 or t == 102:  # i I f
        return 4
    return -1


def aux_string(const uint64_t[:] off, const uint8_t[:] data, bytes tag):
    """Per record of BAM aux bytes, the ``Z`` (or ``H``) value of ``tag`` (e.g. ``b"RG"``):
    ``(hash uint64, start int64, end int64)``, FNV-1a of the value and its span in ``data``; start -1
    (hash 0) where the record has no such tag. A malformed aux field stops the record's scan."""
    cdef Py_ssize_t n = off.shape[0] - 1, i
    if len(tag) != 2:
        raise ValueError("a tag has two characters")
    cdef uint8_t t0 = tag[0], t1 = tag[1], typ, sub
    hashes = np.zeros(max(n, 0), dtype=np.uint64)
    starts = np.full(max(n, 0), -1, dtype=np.int64)
    ends = np.full(max(n, 0), -1, dtype=np.int64)
    cdef uint64_t[:] hs = hashes
    cdef int64_t[:] st = starts
    cdef int64_t[:] en = ends
    cdef int64_t k, e, j, size, cnt
    cdef uint64_t h
    with nogil:
        for i in range(n):
            k = <int64_t>off[i]
            e = <int64_t>off[i + 1]
            while k + 3 <= e:
                typ = data[k + 2]
                if typ == 90 or typ == 72:  # Z H: up to the NUL
                    j = k + 3
                    while j < e and data[j] != 0:
                        j += 1
                    if data[k] == t0 and data[k + 1] == t1:
                        h = 14695981039346656037ULL
                        for size in range(k + 3, j):
                            h = (h ^ data[size]) * 1099511628211ULL
                        hs[i] = h
                        st[i] = k + 3
                        en[i] = j
                        break
                    k = j + 1
                elif typ == 66:  # B: subtype, count, values
                    if k + 8 > e:
                        break
                    sub = data[k + 3]
                    size = _aux_size(sub)
                    if size < 0:
                        break
                    cnt = <int64_t>data[k + 4] | (<int64_t>data[k + 5] << 8) | (<int64_t>data[k + 6] << 16) \
                        | (<int64_t>data[k + 7] << 24)
                    k = k + 8 + cnt * size
                else:
                    size = _aux_size(typ)
                    if size < 0:
                        break
                    k = k + 3 + size
    return hashes, starts, ends
