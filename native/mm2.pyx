# cython: language_level=3
"""minimap2 bound directly: index load/build and whole-work-item mapping with the GIL released.

:class:`Index` owns a minimap2 index (``mm_idx_t``) and the mapping options
(``mm_mapopt_t``) fitted to it (``mm_mapopt_update``). :class:`Mapper` owns one
per-thread scratch buffer (``mm_tbuf_t``) and maps a whole block of reads in
one call, inside ``with nogil:``, producing SAM-ready records in C:

- paired blocks (interleaved, record 2i = read 1, 2i+1 = read 2) go through
  ``mm_map_frag`` with two segments exactly as the minimap2 binary's worker does:
  read 2 is reverse-complemented before mapping and its hits are flipped back
  (query coordinates mirrored, strand inverted) afterwards (map.c ``worker_for``);
- read names (up to the first whitespace; read 1's for a pair) are passed as
  ``qname``, which minimap2 hashes to break ties, as the binary does;
- the records follow minimap2's SAM writer (format.c ``mm_write_sam3``): the
  primary line of a read is its hit with ``sam_pri``; flags 0x1/0x2/0x4/0x8/0x10/
  0x20/0x40/0x80/0x100/0x800 from ``proper_frag``/``rev``/``parent``/``sam_pri`` and
  the mate's primary; an unmapped read with a mapped mate takes the mate's
  position; TLEN is 5'-to-5' plus one base, signed; CIGARs get soft clips from
  ``qs``/``qe`` (supplementary and secondary records keep soft clips too, like
  ``minimap2 -Y``);
- secondary columns list the read's other hits in minimap2's order; a read with
  fewer gets absent rows (``present`` false; fields those of an unmapped read,
  persona.agd.records.ABSENT_ROW).

A Mapper is used by one thread at a time (it raises if entered concurrently);
an Index is shared read-only by any number of Mappers.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

import numpy as np


cdef extern from "minimap.h" nogil:
    const char *MM_VERSION

    ctypedef struct mm_idxopt_t:
        short k, w, flag, bucket_bits
        int64_t mini_batch_size
        uint64_t batch_size

    ctypedef struct mm_mapopt_t:
        int64_t flag
        int seed
        int bw, bw_long
        int max_frag_len
        int max_chain_skip
        int min_cnt
        int min_chain_score
        int best_n
        int a, b, q, e, q2, e2
        int sc_ambi
        int min_dp_max
        int pe_ori, pe_bonus
        int32_t mid_occ

    ctypedef struct mm_idx_seq_t:
        char *name
        uint64_t offset
        uint32_t len

    ctypedef struct mm_idx_t:
        int32_t b, w, k, flag
        uint32_t n_seq
        mm_idx_seq_t *seq

    ctypedef struct mm_extra_t:
        int32_t dp_score
        uint32_t n_cigar
        uint32_t *cigar

    ctypedef struct mm_reg1_t:
        int32_t id, rid, score, qs, qe, rs, re, parent
        uint32_t mapq, rev, sam_pri, proper_frag
        mm_extra_t *p

    ctypedef struct mm_idx_reader_t:
        pass

    ctypedef struct mm_tbuf_t:
        pass

    int mm_set_opt(const char *preset, mm_idxopt_t *io, mm_mapopt_t *mo)
    void mm_mapopt_update(mm_mapopt_t *opt, const mm_idx_t *mi)
    mm_idx_reader_t *mm_idx_reader_open(const char *fn, const mm_idxopt_t *opt, const char *fn_out)
    mm_idx_t *mm_idx_reader_read(mm_idx_reader_t *r, int n_threads)
    int mm_idx_reader_eof(const mm_idx_reader_t *r)
    void mm_idx_reader_close(mm_idx_reader_t *r)
    int64_t mm_idx_is_idx(const char *fn)
    void mm_idx_destroy(mm_idx_t *mi)
    mm_tbuf_t *mm_tbuf_init()
    void mm_tbuf_destroy(mm_tbuf_t *b)
    void mm_map_frag(const mm_idx_t *mi, int n_segs, const int *qlens, const char **seqs, int *n_regs,
                     mm_reg1_t **regs, mm_tbuf_t *b, const mm_mapopt_t *opt, const char *qname)


from alignment_row cimport AlnRec

cdef struct Buf:  # a growable byte buffer (CIGAR text of one column)
    uint8_t *data
    size_t len
    size_t cap

cdef enum:
    MM_F_CIGAR = 0x004
    MM_I_NO_SEQ = 0x2
    ABSENT_FLAG = 0x4  # the flag of persona.agd.records.ABSENT_ROW

ALIGNMENT_FIELDS = [("flag", "<u4"), ("mapq", "<i4"), ("ref_index", "<i4"), ("position", "<i8"),
                    ("next_ref_index", "<i4"), ("next_position", "<i8"), ("template_length", "<i8")]
_DTYPE = np.dtype(ALIGNMENT_FIELDS)
assert _DTYPE.itemsize == sizeof(AlnRec)

cdef uint8_t COMP[256]
cdef int _i
for _i in range(256):
    COMP[_i] = <uint8_t>_i
for _a, _b in zip(b"ACGTNacgtn", b"TGCANtgcan"):
    COMP[_a] = _b
cdef const char *CIGAR_OPS = b"MIDNSHP=XB"

#: mapping options accepted as overrides (the same names and meanings as mappy.Aligner's keywords)
OPTION_NAMES = ("k", "w", "min_cnt", "min_chain_score", "min_dp_score", "bw", "best_n", "max_frag_len",
                "extra_flags", "scoring")


cdef int _reserve(Buf *b, size_t extra) noexcept nogil:
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


cdef int _put_cigar(Buf *b, const mm_reg1_t *r, int qlen) noexcept nogil:
    """minimap2's write_sam_cigar with soft clips; nothing for a hit without CIGAR."""
    cdef uint32_t k, c, left, right
    if r.p == NULL:
        return 0
    if _reserve(b, (r.p.n_cigar + 2) * 12) < 0:
        return -1
    left = <uint32_t>(qlen - r.qe if r.rev else r.qs)
    right = <uint32_t>(r.qs if r.rev else qlen - r.qe)
    if left:
        _put_uint(b, left)
        b.data[b.len] = 83  # 'S'
        b.len += 1
    for k in range(r.p.n_cigar):
        c = r.p.cigar[k]
        _put_uint(b, c >> 4)
        b.data[b.len] = <uint8_t>CIGAR_OPS[c & 0xf]
        b.len += 1
    if right:
        _put_uint(b, right)
        b.data[b.len] = 83
        b.len += 1
    return 0


cdef inline const mm_reg1_t *_sam_pri(int n, const mm_reg1_t *regs) noexcept nogil:
    cdef int i
    for i in range(n):
        if regs[i].sam_pri:
            return &regs[i]
    return NULL


cdef void _record(AlnRec *o, const mm_reg1_t *r, const mm_reg1_t *mate, int n_seg, int seg) noexcept nogil:
    """One SAM line's fields as mm_write_sam3 computes them (``r`` NULL: the read is unmapped)."""
    cdef uint32_t flag = 1 if n_seg > 1 else 0
    cdef int32_t this_rid = -1
    cdef int64_t this_pos = -1, tlen = 0, p5, n5
    if r == NULL:
        flag |= 0x4
    else:
        if r.rev:
            flag |= 0x10
        if r.parent != r.id:
            flag |= 0x100
        elif not r.sam_pri:
            flag |= 0x800
    if n_seg > 1:
        if r != NULL and r.proper_frag:
            flag |= 0x2
        flag |= 0x40 if seg == 0 else 0x80
        if mate == NULL:
            flag |= 0x8
        elif mate.rev:
            flag |= 0x20
    o.flag = flag
    if r == NULL:
        o.mapq = 0
        if mate != NULL:  # placed at its mapped mate
            this_rid = mate.rid
            this_pos = mate.rs
    else:
        o.mapq = <int32_t>r.mapq
        this_rid = r.rid
        this_pos = r.rs
    o.ref_index = this_rid
    o.position = this_pos
    o.next_ref_index = -1
    o.next_position = -1
    if n_seg > 1:
        if mate != NULL:
            o.next_ref_index = mate.rid
            o.next_position = mate.rs
            if this_rid >= 0 and this_rid == mate.rid and r != NULL:
                p5 = r.re - 1 if r.rev else this_pos
                n5 = mate.re - 1 if mate.rev else mate.rs
                tlen = n5 - p5
        elif this_rid >= 0:  # the unmapped mate will take this read's coordinate
            o.next_ref_index = this_rid
            o.next_position = this_pos
        if tlen > 0:
            tlen += 1
        elif tlen < 0:
            tlen -= 1
    o.template_length = tlen


cdef void _no_alignment(AlnRec *o) noexcept nogil:
    o.flag = ABSENT_FLAG
    o.mapq = 0
    o.ref_index = -1
    o.position = -1
    o.next_ref_index = -1
    o.next_position = -1
    o.template_length = 0


cdef class Index:
    """A loaded minimap2 index plus the mapping options fitted to it (read-only, shareable)."""

    cdef mm_idx_t *idx
    cdef mm_idxopt_t iopt
    cdef mm_mapopt_t mopt
    cdef readonly str preset
    cdef readonly str path

    def __cinit__(self) -> None:
        self.idx = NULL

    def __dealloc__(self) -> None:
        if self.idx != NULL:
            mm_idx_destroy(self.idx)
            self.idx = NULL

    cdef _set_options(self, str preset, dict options):
        unknown = set(options) - set(OPTION_NAMES)
        if unknown:
            raise ValueError(f"unknown minimap2 option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(OPTION_NAMES)}")
        mm_set_opt(NULL, &self.iopt, &self.mopt)
        if mm_set_opt(preset.encode(), &self.iopt, &self.mopt) < 0:
            raise ValueError(f"unknown minimap2 preset {preset!r}")
        self.preset = preset
        self.mopt.flag |= MM_F_CIGAR  # always align (base-level CIGARs)
        self.iopt.batch_size = 0x7fffffffffffffff  # always a one-part index
        o = options
        if o.get("k") is not None: self.iopt.k = int(o["k"])
        if o.get("w") is not None: self.iopt.w = int(o["w"])
        if o.get("min_cnt") is not None: self.mopt.min_cnt = int(o["min_cnt"])
        if o.get("min_chain_score") is not None: self.mopt.min_chain_score = int(o["min_chain_score"])
        if o.get("min_dp_score") is not None: self.mopt.min_dp_max = int(o["min_dp_score"])
        if o.get("bw") is not None: self.mopt.bw = int(o["bw"])
        if o.get("best_n") is not None: self.mopt.best_n = int(o["best_n"])
        if o.get("max_frag_len") is not None: self.mopt.max_frag_len = int(o["max_frag_len"])
        if o.get("extra_flags") is not None: self.mopt.flag |= int(o["extra_flags"])
        sc = o.get("scoring")
        if sc is not None:
            sc = [int(x) for x in sc]
            if len(sc) < 4:
                raise ValueError("scoring needs at least (match, mismatch, gap_open, gap_extend)")
            self.mopt.a, self.mopt.b, self.mopt.q, self.mopt.e = sc[0], sc[1], sc[2], sc[3]
            self.mopt.q2, self.mopt.e2 = self.mopt.q, self.mopt.e
            if len(sc) >= 6:
                self.mopt.q2, self.mopt.e2 = sc[4], sc[5]
            if len(sc) >= 7:
                self.mopt.sc_ambi = sc[6]

    cdef _read(self, str path, str out_path, int threads):
        cdef bytes bpath = path.encode()
        cdef bytes bout = out_path.encode() if out_path else b""
        cdef const char *cout = <const char*>bout if out_path else NULL
        cdef mm_idx_reader_t *r = mm_idx_reader_open(bpath, &self.iopt, cout)
        cdef mm_idx_t *mi
        cdef int more
        if r == NULL:
            raise OSError(f"minimap2 cannot open {path}" + (f" or create {out_path}" if out_path else ""))
        with nogil:
            mi = mm_idx_reader_read(r, threads)
            more = mm_idx_reader_eof(r) == 0
        mm_idx_reader_close(r)
        if mi == NULL:
            raise ValueError(f"minimap2 read no index from {path}")
        self.idx = mi
        if mi.n_seq == 0:
            raise ValueError(f"{path}: no sequences (empty or not FASTA/FASTQ)")
        if more:
            raise ValueError(f"{path}: multi-part minimap2 index (built with a small -I); rebuild it as one part")
        if (self.mopt.flag & MM_F_CIGAR) and (mi.flag & MM_I_NO_SEQ):
            raise ValueError(f"{path}: minimap2 index without sequences (built with --idx-no-seq) cannot align")
        mm_mapopt_update(&self.mopt, mi)
        self.path = path

    @staticmethod
    def load(path, str preset="sr", dict options=None):
        """Load a minimap2 ``.mmi`` (``path``) with ``preset``'s mapping options plus ``options`` overrides."""
        cdef Index self = Index.__new__(Index)
        path = str(path)
        if mm_idx_is_idx(path.encode()) <= 0:
            raise ValueError(f"{path} is not a minimap2 index (.mmi)")
        self._set_options(preset, dict(options or {}))
        self._read(path, None, 1)
        return self

    @staticmethod
    def build(fasta, str preset="sr", out_path=None, int threads=3, dict options=None):
        """Index ``fasta`` for ``preset`` (+ ``k``/``w`` overrides); also write it to ``out_path`` if given."""
        cdef Index self = Index.__new__(Index)
        self._set_options(preset, dict(options or {}))
        self._read(str(fasta), str(out_path) if out_path is not None else None, threads)
        return self

    @property
    def names(self) -> list:
        """Contig names in index order."""
        return [self.idx.seq[i].name.decode() for i in range(self.idx.n_seq)]

    @property
    def lengths(self) -> list:
        """Contig lengths in index order."""
        return [int(self.idx.seq[i].len) for i in range(self.idx.n_seq)]

    @property
    def k(self) -> int:
        return self.idx.k

    @property
    def w(self) -> int:
        return self.idx.w

    def mapper(self):
        """A new :class:`Mapper` (own scratch buffer) over this index."""
        return Mapper(self)


cdef class Mapper:
    """Maps blocks of reads against an :class:`Index`; one thread at a time (owns ``mm_tbuf_t``)."""

    cdef Index index
    cdef mm_tbuf_t *buf
    cdef bint busy
    cdef char *scratch       # read 2 reverse-complemented
    cdef size_t scratch_cap
    cdef char *qname         # NUL-terminated read name
    cdef size_t qname_cap

    def __cinit__(self, Index index) -> None:
        if index is None or index.idx == NULL:
            raise ValueError("Mapper needs a loaded Index")
        self.index = index
        self.buf = mm_tbuf_init()
        self.busy = False
        self.scratch = NULL
        self.scratch_cap = 0
        self.qname = NULL
        self.qname_cap = 0
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self) -> None:
        if self.buf != NULL:
            mm_tbuf_destroy(self.buf)
        free(self.scratch)
        free(self.qname)

    cdef int _grow(self, char **p, size_t *cap, size_t need) noexcept nogil:
        cdef size_t c
        cdef char *q
        if need <= cap[0]:
            return 0
        c = cap[0] * 2 if cap[0] else 1024
        while c < need:
            c *= 2
        q = <char*>realloc(p[0], c)
        if q == NULL:
            return -1
        p[0] = q
        cap[0] = c
        return 0

    cdef const char *_name(self, const uint64_t *no, const uint8_t *nd, Py_ssize_t i) noexcept nogil:
        """Record ``i``'s name up to the first whitespace, NUL-terminated; NULL when absent or empty."""
        cdef uint64_t s, e, j
        if no == NULL:
            return NULL
        s = no[i]
        e = no[i + 1]
        j = s
        while j < e and nd[j] != 32 and nd[j] != 9:
            j += 1
        if j == s or self._grow(&self.qname, &self.qname_cap, j - s + 1) < 0:
            return NULL
        memcpy(self.qname, nd + s, j - s)
        self.qname[j - s] = 0
        return self.qname

    def map(self, const uint64_t[::1] offsets, const uint8_t[::1] data, names_offsets=None,
            names_data=None, bint paired=False, int secondary=0):
        """Map every read of a block; returns ``(primary, [secondary_1 .. secondary_N])``.

        ``offsets``/``data`` are a RaggedArray of text bases (one record per read;
        interleaved pairs when ``paired``), ``names_offsets``/``names_data`` the
        optional read names. ``primary`` is ``(fields, cigar_offsets, cigar_data)``:
        ``fields`` an ALIGNMENT_DTYPE-layout array with one row per read, the CIGARs
        a RaggedArray's arrays. Each secondary is ``(fields, cigar_offsets,
        cigar_data, present)``, ``present`` a bool array (False: the read has no
        such alignment). All mapping and record building runs without the GIL.
        """
        cdef Py_ssize_t n = offsets.shape[0] - 1, i
        cdef Py_ssize_t n_sec = secondary
        cdef const uint64_t[::1] no
        cdef const uint8_t[::1] nd
        cdef const uint64_t *nop = NULL
        cdef const uint8_t *ndp = NULL
        if n < 0:
            raise ValueError("offsets must hold at least one entry")
        if secondary < 0:
            raise ValueError(f"secondary must be >= 0, got {secondary}")
        if paired and n % 2:
            raise ValueError(f"paired block has an odd number of reads ({n})")
        if n > 0 and offsets[n] > <uint64_t>data.shape[0]:
            raise ValueError(f"offsets end at {offsets[n]} but data holds {data.shape[0]} bytes")
        for i in range(n):
            if offsets[i + 1] < offsets[i] or offsets[i + 1] - offsets[i] > 0x7fffffff:
                raise ValueError(f"bad offsets at record {i}")
        if (names_offsets is None) != (names_data is None):
            raise ValueError("give both names_offsets and names_data, or neither")
        if names_offsets is not None:
            no = names_offsets
            nd = names_data
            if no.shape[0] != n + 1:
                raise ValueError(f"{n} reads but {no.shape[0] - 1} names")
            if n > 0 and no[n] > <uint64_t>nd.shape[0]:
                raise ValueError("name offsets run past the name data")
            for i in range(n):
                if no[i + 1] < no[i]:
                    raise ValueError(f"bad name offsets at record {i}")
            nop = &no[0]
            ndp = &nd[0] if nd.shape[0] > 0 else NULL
        # check-and-set with no Python call in between, so no other thread can slip in
        if self.busy:
            raise RuntimeError("a Mapper is used by one thread at a time; make one Mapper per thread")
        self.busy = True
        try:
            return self._map(offsets, data, nop, ndp, n, paired, n_sec)
        finally:
            self.busy = False

    cdef object _map(self, const uint64_t[::1] offsets, const uint8_t[::1] data, const uint64_t *nop,
                     const uint8_t *ndp, Py_ssize_t n, bint paired, Py_ssize_t n_sec):
        cdef Py_ssize_t i, j, k, m
        cdef int n_seg = 2 if paired else 1
        fields = np.empty(n, dtype=_DTYPE)
        cig_offsets = np.zeros(n + 1, dtype=np.uint64)
        sec_fields = [np.empty(n, dtype=_DTYPE) for _ in range(n_sec)]
        sec_offsets = [np.zeros(n + 1, dtype=np.uint64) for _ in range(n_sec)]
        sec_present = [np.zeros(n, dtype=np.uint8) for _ in range(n_sec)]
        cdef AlnRec *out = <AlnRec*>_ptr(fields) if n else NULL
        cdef uint64_t[::1] co = cig_offsets
        cdef AlnRec **sout = <AlnRec**>malloc(max(n_sec, 1) * sizeof(AlnRec*))
        cdef uint64_t **soff = <uint64_t**>malloc(max(n_sec, 1) * sizeof(uint64_t*))
        cdef uint8_t **spres = <uint8_t**>malloc(max(n_sec, 1) * sizeof(uint8_t*))
        cdef Buf *bufs = <Buf*>malloc((n_sec + 1) * sizeof(Buf))
        cdef uint64_t[::1] tmp_off
        cdef uint8_t[::1] tmp_pres
        if sout == NULL or soff == NULL or bufs == NULL or spres == NULL:
            free(sout); free(soff); free(bufs); free(spres)
            raise MemoryError()
        for k in range(n_sec + 1):
            bufs[k].data = NULL
            bufs[k].len = 0
            bufs[k].cap = 0
        for k in range(n_sec):
            sout[k] = <AlnRec*>_ptr(sec_fields[k]) if n else NULL
            tmp_off = sec_offsets[k]
            soff[k] = &tmp_off[0]
            tmp_pres = sec_present[k]
            spres[k] = &tmp_pres[0] if n else NULL
        cdef const uint8_t *dp = &data[0] if data.shape[0] > 0 else NULL
        cdef const uint64_t *op = &offsets[0]
        cdef uint64_t *cop = &co[0]
        cdef int qlens[2]
        cdef const char *seqs[2]
        cdef int n_regs[2]
        cdef mm_reg1_t *regs[2]
        cdef mm_reg1_t *r
        cdef const mm_reg1_t *pri[2]
        cdef const char *name
        cdef int failed = 0, t, l2, s
        cdef Py_ssize_t read_idx
        cdef char *rc
        cdef const mm_idx_t *mi = self.index.idx
        cdef const mm_mapopt_t *opt = &self.index.mopt
        try:
            with nogil:
                i = 0
                while i < n and not failed:
                    name = self._name(nop, ndp, i)
                    for s in range(n_seg):
                        qlens[s] = <int>(op[i + s + 1] - op[i + s])
                        seqs[s] = <const char*>(dp + op[i + s]) if qlens[s] else <const char*>""
                    if paired:  # read 2 mapped reverse-complemented (pe_ori fr), as the binary's worker does
                        l2 = qlens[1]
                        if self._grow(&self.scratch, &self.scratch_cap, <size_t>l2 + 1) < 0:
                            failed = 1
                            break
                        rc = self.scratch
                        for j in range(l2):
                            rc[l2 - 1 - j] = <char>COMP[<uint8_t>seqs[1][j]]
                        rc[l2] = 0
                        seqs[1] = rc
                    mm_map_frag(mi, n_seg, qlens, seqs, n_regs, regs, self.buf, opt, name)
                    if paired:  # flip read 2's hits back to its own strand and coordinates
                        for j in range(n_regs[1]):
                            r = &regs[1][j]
                            t = r.qs
                            r.qs = l2 - r.qe
                            r.qe = l2 - t
                            r.rev = 0 if r.rev else 1
                    for s in range(n_seg):
                        pri[s] = _sam_pri(n_regs[s], regs[s])
                    for s in range(n_seg):
                        read_idx = i + s
                        _record(&out[read_idx], pri[s], pri[1 - s] if paired else NULL, n_seg, s)
                        if pri[s] != NULL and _put_cigar(&bufs[0], pri[s], qlens[s]) < 0:
                            failed = 1
                        cop[read_idx + 1] = bufs[0].len
                        k = 0
                        for j in range(n_regs[s]):
                            if k >= n_sec:
                                break
                            r = &regs[s][j]
                            if r == pri[s]:
                                continue
                            _record(&sout[k][read_idx], r, pri[1 - s] if paired else NULL, n_seg, s)
                            if _put_cigar(&bufs[k + 1], r, qlens[s]) < 0:
                                failed = 1
                            soff[k][read_idx + 1] = bufs[k + 1].len
                            spres[k][read_idx] = 1
                            k += 1
                        for m in range(k, n_sec):
                            _no_alignment(&sout[m][read_idx])
                            soff[m][read_idx + 1] = bufs[m + 1].len
                    for s in range(n_seg):
                        for j in range(n_regs[s]):
                            free(regs[s][j].p)
                        free(regs[s])
                    i += n_seg
            if failed:
                raise MemoryError("out of memory while mapping")
            primary = (fields, cig_offsets, _take(&bufs[0]))
            secs = [(sec_fields[k], sec_offsets[k], _take(&bufs[k + 1]), sec_present[k].view(np.bool_))
                    for k in range(n_sec)]
            return primary, secs
        finally:
            for k in range(n_sec + 1):
                free(bufs[k].data)
            free(bufs)
            free(sout)
            free(soff)
            free(spres)


#: the version of the minimap2 library compiled into this module
MINIMAP2_VERSION = MM_VERSION.decode()


cdef void *_ptr(object arr) except NULL:
    cdef uint8_t[::1] v = arr.view(np.uint8).reshape(-1)
    return <void*>&v[0]


cdef object _take(Buf *b):
    out = np.empty(b.len, dtype=np.uint8)
    cdef uint8_t[::1] v = out
    if b.len:
        memcpy(&v[0], b.data, b.len)
    return out
