# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Sort and merge kernels (GIL released): sort keys, stable argsort of byte keys, ragged gathers and
the k-way merge heap of ``persona sort`` (see :mod:`persona.apps.sort`).

Keys
----
* **coordinate**: one ``uint64`` per record, ``ref << 32 | (pos + 1) << 1 | reverse`` with an
  unmapped reference (``ref < 0``) as ``0xFFFFFFFF`` (last), exactly the order ``samtools sort``
  compares (tid as unsigned, pos, strand); ties keep input order (the sorts are stable and the
  merge breaks ties by run, runs being consecutive input ranges).
* **queryname**: a byte string per record, the read name as exported (up to the first
  whitespace, without a ``/1`` ``/2`` suffix on paired reads) then one byte
  ``1 + ((flag & 0xC0) >> 6)``: unpaired, read 1, read 2 (SAM: read 1 before read 2). Names are
  printable, so the byte below any of them keeps plain lexicographic order between names.
"""
from libc.stdint cimport uint8_t, uint32_t, int32_t, int64_t, uint64_t
from libc.string cimport memcmp, memcpy
from libc.stdlib cimport malloc, free

import numpy as np
cimport numpy as cnp

cnp.import_array()


def coordinate_keys(const uint32_t[:] flag, const int32_t[:] ref, const int64_t[:] pos):
    """``uint64`` coordinate keys (see the module docstring)."""
    cdef Py_ssize_t n = flag.shape[0], i
    if ref.shape[0] != n or pos.shape[0] != n:
        raise ValueError("flag, ref and pos differ in length")
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[:] o = out
    cdef uint64_t r, p
    with nogil:
        for i in range(n):
            r = <uint64_t>0xFFFFFFFF if ref[i] < 0 else <uint64_t>ref[i]
            p = <uint64_t>(pos[i] + 1) & <uint64_t>0x7FFFFFFF if pos[i] >= -1 else 0
            o[i] = (r << 32) | (p << 1) | ((flag[i] >> 4) & 1)
    return out


def name_keys(const uint64_t[:] offsets, const uint8_t[:] data, const uint32_t[:] flag):
    """Queryname keys as a ragged array ``(offsets, data)`` (see the module docstring)."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    if flag.shape[0] != n:
        raise ValueError("names and flags differ in length")
    lens = np.empty(n, dtype=np.int64)
    cdef int64_t[:] L = lens
    cdef int64_t s, e, k, total = 0
    with nogil:
        for i in range(n):
            s = <int64_t>offsets[i]
            e = <int64_t>offsets[i + 1]
            k = s
            while k < e and data[k] != 32 and data[k] != 9:
                k += 1
            if (flag[i] & 1) and k - s > 2 and data[k - 2] == 47 and (data[k - 1] == 49 or data[k - 1] == 50):
                k -= 2
            L[i] = k - s
            total += k - s + 1
    out_off = np.zeros(n + 1, dtype=np.uint64)
    out = np.empty(total, dtype=np.uint8)
    cdef uint64_t[:] oo = out_off
    cdef uint8_t[:] od = out
    cdef uint64_t at = 0
    with nogil:
        for i in range(n):
            if L[i]:
                memcpy(&od[at], &data[offsets[i]], L[i])
            at += L[i]
            od[at] = 1 + ((flag[i] & 0xC0) >> 6)
            at += 1
            oo[i + 1] = at
    return out_off, out


cdef inline int _cmp_bytes(const uint8_t* a, int64_t la, const uint8_t* b, int64_t lb) noexcept nogil:
    cdef int c = memcmp(a, b, la if la < lb else lb)
    if c != 0:
        return c
    return -1 if la < lb else (1 if la > lb else 0)


cdef void _msort(int64_t* idx, int64_t* tmp, int64_t n, const uint64_t* off, const uint8_t* data) noexcept nogil:
    """Stable merge sort of ``idx[0:n]`` by the ragged byte keys (bottom-up, insertion sort on runs of 16)."""
    cdef int64_t w, i, j, lo, mid, hi, a, b, k, t
    cdef int64_t* src = idx
    cdef int64_t* dst = tmp
    cdef int64_t* sw
    for lo in range(0, n, 16):
        hi = lo + 16 if lo + 16 < n else n
        for i in range(lo + 1, hi):
            t = src[i]
            j = i - 1
            while j >= lo and _cmp_bytes(data + off[src[j]], <int64_t>(off[src[j] + 1] - off[src[j]]),
                                         data + off[t], <int64_t>(off[t + 1] - off[t])) > 0:
                src[j + 1] = src[j]
                j -= 1
            src[j + 1] = t
    w = 16
    while w < n:
        lo = 0
        while lo < n:
            mid = lo + w if lo + w < n else n
            hi = lo + 2 * w if lo + 2 * w < n else n
            a = lo
            b = mid
            k = lo
            while a < mid and b < hi:
                if _cmp_bytes(data + off[src[b]], <int64_t>(off[src[b] + 1] - off[src[b]]),
                              data + off[src[a]], <int64_t>(off[src[a] + 1] - off[src[a]])) < 0:
                    dst[k] = src[b]
                    b += 1
                else:
                    dst[k] = src[a]
                    a += 1
                k += 1
            while a < mid:
                dst[k] = src[a]
                a += 1
                k += 1
            while b < hi:
                dst[k] = src[b]
                b += 1
                k += 1
            lo = hi
        sw = src
        src = dst
        dst = sw
        w *= 2
    if src != idx:
        memcpy(idx, src, n * sizeof(int64_t))


def argsort_bytes(const uint64_t[:] offsets, const uint8_t[:] data):
    """Stable argsort (``int64``) of ragged byte keys, bytewise, a prefix before its extensions."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    out = np.arange(n, dtype=np.int64)
    if n < 2:
        return out
    tmp = np.empty(n, dtype=np.int64)
    cdef int64_t[:] o = out
    cdef int64_t[:] t = tmp
    cdef const uint8_t* d = &data[0] if data.shape[0] else NULL
    cdef uint8_t dummy = 0
    if d == NULL:
        d = &dummy
    with nogil:
        _msort(&o[0], &t[0], n, &offsets[0], d)
    return out


def ragged_take(const uint64_t[:] offsets, const uint8_t[:] data, const int64_t[:] idx):
    """Records ``idx`` of a ragged array, in that order: ``(offsets, data)``."""
    cdef Py_ssize_t n = idx.shape[0], m = offsets.shape[0] - 1, i
    cdef int64_t j
    cdef uint64_t total = 0, at = 0, ln
    out_off = np.zeros(n + 1, dtype=np.uint64)
    cdef uint64_t[:] oo = out_off
    with nogil:
        for i in range(n):
            j = idx[i]
            if j < 0 or j >= m:
                with gil:
                    raise IndexError(f"record {j} out of range [0, {m})")
            total += offsets[j + 1] - offsets[j]
            oo[i + 1] = total
    out = np.empty(total, dtype=np.uint8)
    if total == 0:
        return out_off, out
    cdef uint8_t[:] od = out
    with nogil:
        for i in range(n):
            j = idx[i]
            ln = offsets[j + 1] - offsets[j]
            if ln:
                memcpy(&od[at], &data[offsets[j]], ln)
            at += ln
    return out_off, out


cdef class Merger:
    """The k-way merge of sorted runs: a binary heap over the runs' current keys, GIL released.

    Each run is fed one key block at a time (:meth:`set_block`: ``uint64`` keys, or ragged byte
    keys ``(offsets, data)``); :meth:`merge` pops up to ``max_n`` records into ``out_run`` /
    ``out_idx`` (run, index within its current block) and stops early when a run's block is used
    up: it then returns that run, which stays out of the heap until it gets its next block
    (:meth:`set_block`) or is declared finished (:meth:`finish`). Ties go to the lower run.
    """

    cdef int k
    cdef bint byte_keys
    cdef int* heap
    cdef int hn
    cdef const uint64_t** ukeys
    cdef const uint64_t** koff
    cdef const uint8_t** kdata
    cdef int64_t* cur
    cdef int64_t* size
    cdef list refs

    def __cinit__(self, int k, bint byte_keys):
        if k < 1:
            raise ValueError("a merge needs at least one run")
        self.k = k
        self.byte_keys = byte_keys
        self.heap = <int*>malloc(k * sizeof(int))
        self.ukeys = <const uint64_t**>malloc(k * sizeof(void*))
        self.koff = <const uint64_t**>malloc(k * sizeof(void*))
        self.kdata = <const uint8_t**>malloc(k * sizeof(void*))
        self.cur = <int64_t*>malloc(k * sizeof(int64_t))
        self.size = <int64_t*>malloc(k * sizeof(int64_t))
        if not (self.heap and self.ukeys and self.koff and self.kdata and self.cur and self.size):
            raise MemoryError()
        self.hn = 0
        self.refs = [None] * k
        for i in range(k):
            self.cur[i] = 0
            self.size[i] = 0

    def __dealloc__(self):
        free(self.heap)
        free(<void*>self.ukeys)
        free(<void*>self.koff)
        free(<void*>self.kdata)
        free(self.cur)
        free(self.size)

    cdef inline bint _lt(self, int a, int b) noexcept nogil:
        cdef int64_t ia = self.cur[a], ib = self.cur[b]
        cdef uint64_t ka, kb
        cdef int c
        if self.byte_keys:
            c = _cmp_bytes(self.kdata[a] + self.koff[a][ia], <int64_t>(self.koff[a][ia + 1] - self.koff[a][ia]),
                           self.kdata[b] + self.koff[b][ib], <int64_t>(self.koff[b][ib + 1] - self.koff[b][ib]))
            if c != 0:
                return c < 0
        else:
            ka = self.ukeys[a][ia]
            kb = self.ukeys[b][ib]
            if ka != kb:
                return ka < kb
        return a < b

    cdef void _up(self, int i) noexcept nogil:
        cdef int p, t
        while i > 0:
            p = (i - 1) >> 1
            if self._lt(self.heap[i], self.heap[p]):
                t = self.heap[i]
                self.heap[i] = self.heap[p]
                self.heap[p] = t
                i = p
            else:
                break

    cdef void _down(self, int i) noexcept nogil:
        cdef int l, r, m, t
        while True:
            l = 2 * i + 1
            r = l + 1
            m = i
            if l < self.hn and self._lt(self.heap[l], self.heap[m]):
                m = l
            if r < self.hn and self._lt(self.heap[r], self.heap[m]):
                m = r
            if m == i:
                return
            t = self.heap[i]
            self.heap[i] = self.heap[m]
            self.heap[m] = t
            i = m

    def set_block(self, int run, keys):
        """Give ``run`` its next key block (an empty block finishes the run)."""
        cdef cnp.ndarray u, off, dat
        cdef uint8_t dummy = 0
        if run < 0 or run >= self.k:
            raise IndexError(run)
        if self.byte_keys:
            off = np.ascontiguousarray(keys[0], dtype=np.uint64)
            dat = np.ascontiguousarray(keys[1], dtype=np.uint8)
            if dat.shape[0] == 0:
                dat = np.zeros(1, dtype=np.uint8)
            self.refs[run] = (off, dat)
            self.koff[run] = <const uint64_t*>cnp.PyArray_DATA(off)
            self.kdata[run] = <const uint8_t*>cnp.PyArray_DATA(dat)
            self.size[run] = off.shape[0] - 1
        else:
            u = np.ascontiguousarray(keys, dtype=np.uint64)
            self.refs[run] = u
            self.ukeys[run] = <const uint64_t*>cnp.PyArray_DATA(u)
            self.size[run] = u.shape[0]
        self.cur[run] = 0
        if self.size[run] > 0:
            self.heap[self.hn] = run
            self.hn += 1
            self._up(self.hn - 1)
        else:
            self.refs[run] = None

    def finish(self, int run):
        """``run`` has no more blocks."""
        self.refs[run] = None

    @property
    def active(self):
        """Runs in the heap."""
        return self.hn

    def merge(self, int32_t[:] out_run, int64_t[:] out_idx, Py_ssize_t start, Py_ssize_t max_n):
        """Pop records into ``out_run[start:]`` / ``out_idx[start:]`` until ``max_n`` are out in all,
        the heap is empty, or a run's block is used up. Returns ``(n, run)``: the filled length
        and the run that needs its next block (-1: none)."""
        cdef Py_ssize_t n = start
        cdef int r, need = -1
        if max_n > out_run.shape[0] or max_n > out_idx.shape[0]:
            raise ValueError("output arrays are shorter than max_n")
        with nogil:
            while n < max_n and self.hn > 0:
                r = self.heap[0]
                out_run[n] = r
                out_idx[n] = self.cur[r]
                n += 1
                self.cur[r] += 1
                if self.cur[r] >= self.size[r]:
                    self.hn -= 1
                    if self.hn > 0:
                        self.heap[0] = self.heap[self.hn]
                        self._down(0)
                    need = r
                    break
                self._down(0)
        return n, need


def ragged_gather(list sources, const int32_t[:] src, const int64_t[:] idx):
    """Records ``sources[src[i]][idx[i]]`` for every ``i``, in that order: ``(offsets, data)``.
    ``sources``: a list of ``(offsets uint64, data uint8)`` ragged arrays (None where unused)."""
    cdef Py_ssize_t n = src.shape[0], ns = len(sources), i
    if idx.shape[0] != n:
        raise ValueError("src and idx differ in length")
    cdef const uint64_t** offs = <const uint64_t**>malloc((ns + 1) * sizeof(void*))
    cdef const uint8_t** datas = <const uint8_t**>malloc((ns + 1) * sizeof(void*))
    cdef int64_t* sizes = <int64_t*>malloc((ns + 1) * sizeof(int64_t))
    cdef cnp.ndarray o, d
    cdef list keep = []
    cdef int32_t s
    cdef int64_t j
    cdef uint64_t total = 0, at = 0, ln
    cdef int bad = 0
    out_off = np.zeros(n + 1, dtype=np.uint64)
    cdef uint64_t[:] oo = out_off
    cdef uint8_t[:] od
    try:
        for i in range(ns):
            if sources[i] is None:
                offs[i] = NULL
                datas[i] = NULL
                sizes[i] = 0
                continue
            o = np.ascontiguousarray(sources[i][0], dtype=np.uint64)
            d = np.ascontiguousarray(sources[i][1], dtype=np.uint8)
            keep.append((o, d))
            offs[i] = <const uint64_t*>cnp.PyArray_DATA(o)
            datas[i] = <const uint8_t*>cnp.PyArray_DATA(d)
            sizes[i] = o.shape[0] - 1
        with nogil:
            for i in range(n):
                s = src[i]
                j = idx[i]
                if s < 0 or s >= ns or j < 0 or j >= sizes[s]:
                    bad = 1
                    break
                total += offs[s][j + 1] - offs[s][j]
                oo[i + 1] = total
        if bad:
            raise IndexError(f"record {i}: source {src[i]} index {idx[i]} out of range")
        out = np.empty(total, dtype=np.uint8)
        if total:
            od = out
            with nogil:
                for i in range(n):
                    s = src[i]
                    j = idx[i]
                    ln = offs[s][j + 1] - offs[s][j]
                    if ln:
                        memcpy(&od[at], datas[s] + offs[s][j], ln)
                    at += ln
        return out_off, out
    finally:
        free(<void*>offs)
        free(<void*>datas)
        free(sizes)
