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
from libc.string cimport memcpy, memset, strlen
from libc.stdio cimport snprintf
from libc.stdlib cimport atof, calloc

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
        uint32_t *S

    ctypedef struct mm_extra_t:
        int32_t dp_score, dp_max, dp_max2, dp_max0
        uint32_t n_ambi
        uint32_t n_cigar
        uint32_t *cigar

    ctypedef struct mm_reg1_t:
        int32_t id, cnt, rid, score, qs, qe, rs, re, parent, subsc, mlen, blen
        uint32_t mapq, rev, inv, sam_pri, proper_frag
        mm_extra_t *p

    ctypedef struct mm_idx_reader_t:
        pass

    ctypedef struct mm_tbuf_t:
        int rep_len

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
    int mm_idx_getseq(const mm_idx_t *mi, uint32_t rid, uint32_t st, uint32_t en, uint8_t *seq)
    void mm_map_frag(const mm_idx_t *mi, int n_segs, const int *qlens, const char **seqs, int *n_regs,
                     mm_reg1_t **regs, mm_tbuf_t *b, const mm_mapopt_t *opt, const char *qname)


from alignment_row cimport AlnRec
from aux_buffer cimport (Buf, _aux_char, _aux_float, _aux_int, _md_deletion, _md_end, _md_mismatch, _put_char,
                         _put_uint, _reserve, _tag)

cdef struct Col:  # one output column (primary, or one slot of extra records) while mapping
    AlnRec *rows
    uint64_t *cig_off
    uint64_t *tag_off
    uint8_t *present
    Buf cig
    Buf tags

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



# -- optional tags (BAM binary aux encoding, as samtools would store minimap2's SAM text) ----------

cdef uint8_t NT4[256]  # A,C,G,T (either case) -> 0..3, anything else 4 (minimap2's seq_nt4_table)
for _i in range(256):
    NT4[_i] = 4
for _i, _a in enumerate((65, 67, 71, 84)):  # A C G T
    NT4[_a] = _i
    NT4[_a + 32] = _i
cdef const char *NT4_CHARS = b"ACGTN"


cdef inline uint8_t _ref4(const uint32_t *S, uint64_t i) noexcept nogil:
    """Base ``i`` of the index's 4-bit packed sequence (minimap2's mm_seq4_get)."""
    return (S[i >> 3] >> ((i & 7) << 2)) & 0xf


cdef int _put_md(Buf *b, const mm_reg1_t *r, const uint8_t *read, const uint32_t *S, uint64_t t0) noexcept nogil:
    """``MD:Z``: the reference is read from the index's packed sequence ``S`` (hit start at ``t0``),
    ``read`` holds the read's text bases
    in sequencing orientation (reverse-complemented here for a reverse-strand hit). Like minimap2's
    MD (format.c) except that it always ends in a number, as the SAM specification's grammar asks."""
    cdef uint32_t k, c, op, ln, j
    cdef int64_t q_off = 0, t_off = 0
    cdef uint32_t l_md = 0
    cdef uint8_t qc, tc
    cdef const mm_extra_t *p = r.p
    if _reserve(b, 4 * <size_t>(r.re - r.rs) + 12 * <size_t>p.n_cigar + 24) < 0:
        return -1
    _tag(b, b"MD", 90)
    for k in range(p.n_cigar):
        c = p.cigar[k]
        op = c & 0xf
        ln = c >> 4
        if op == 0 or op == 7 or op == 8:  # M, =, X
            for j in range(ln):
                if r.rev:
                    qc = NT4[read[r.qe - 1 - (q_off + j)]]
                    qc = 4 if qc >= 4 else 3 - qc
                else:
                    qc = NT4[read[r.qs + q_off + j]]
                tc = _ref4(S, t0 + t_off + j)
                if qc != tc:
                    _md_mismatch(b, l_md, <uint8_t>NT4_CHARS[tc if tc < 4 else 4])
                    l_md = 0
                else:
                    l_md += 1
            q_off += ln
            t_off += ln
        elif op == 1 or op == 4:  # I (S never occurs inside minimap2's CIGAR)
            q_off += ln
        elif op == 2:  # D
            _md_deletion(b, l_md)
            for j in range(ln):
                tc = _ref4(S, t0 + t_off + j)
                _put_char(b, <uint8_t>NT4_CHARS[tc if tc < 4 else 4])
            l_md = 0
            t_off += ln
        elif op == 3:  # N
            t_off += ln
    _md_end(b, l_md)
    return 0


cdef inline int32_t _nm(const mm_reg1_t *r) noexcept nogil:
    return r.blen - r.mlen + <int32_t>r.p.n_ambi


cdef int _put_sa(Buf *b, const mm_reg1_t *r, const mm_reg1_t *regs, int n_regs, int qlen,
                 const mm_idx_t *mi) noexcept nogil:
    """``SA:Z`` on a primary or supplementary hit: the read's other primary-chain hits (format.c's rule)."""
    cdef int i, n_sa = 0
    cdef const mm_reg1_t *q
    cdef int32_t l_m, l_i, l_d, clip5, clip3
    cdef size_t ln
    for i in range(n_regs):
        if &regs[i] != r and regs[i].parent == regs[i].id and regs[i].p != NULL:
            n_sa += 1
    if n_sa == 0:
        return 0
    if _reserve(b, 4) < 0:
        return -1
    _tag(b, b"SA", 90)
    for i in range(n_regs):
        q = &regs[i]
        if q == r or q.parent != q.id or q.p == NULL:
            continue
        ln = strlen(mi.seq[q.rid].name)
        if _reserve(b, ln + 100) < 0:
            return -1
        l_i = 0
        l_d = 0
        if q.qe - q.qs < q.re - q.rs:
            l_m = q.qe - q.qs
            l_d = (q.re - q.rs) - l_m
        else:
            l_m = q.re - q.rs
            l_i = (q.qe - q.qs) - l_m
        clip5 = qlen - q.qe if q.rev else q.qs
        clip3 = q.qs if q.rev else qlen - q.qe
        memcpy(b.data + b.len, mi.seq[q.rid].name, ln)
        b.len += ln
        _put_char(b, 44)
        _put_uint(b, <uint32_t>(q.rs + 1))
        _put_char(b, 44)
        _put_char(b, 45 if q.rev else 43)
        _put_char(b, 44)
        if clip5:
            _put_uint(b, <uint32_t>clip5)
            _put_char(b, 83)
        if l_m:
            _put_uint(b, <uint32_t>l_m)
            _put_char(b, 77)
        if l_i:
            _put_uint(b, <uint32_t>l_i)
            _put_char(b, 73)
        if l_d:
            _put_uint(b, <uint32_t>l_d)
            _put_char(b, 68)
        if clip3:
            _put_uint(b, <uint32_t>clip3)
            _put_char(b, 83)
        _put_char(b, 44)
        _put_uint(b, q.mapq)
        _put_char(b, 44)
        _put_uint(b, <uint32_t>_nm(q))
        _put_char(b, 59)
    if _reserve(b, 1) < 0:
        return -1
    _put_char(b, 0)
    return 0


cdef float _divergence(const mm_reg1_t *r) noexcept nogil:
    """``de:f``: 1 - minimap2's gap-compressed identity (mm_event_identity), rounded as ``%.4f`` prints it."""
    cdef uint32_t k, op
    cdef int32_t n_gapo = 0, n_gap = 0
    cdef double div
    cdef char buf[24]
    for k in range(r.p.n_cigar):
        op = r.p.cigar[k] & 0xf
        if op == 1 or op == 2:
            n_gapo += 1
            n_gap += <int32_t>(r.p.cigar[k] >> 4)
    div = 1.0 - <double>r.mlen / <double>(r.blen + <int32_t>r.p.n_ambi - n_gap + n_gapo)
    if div == 0.0:
        return 0.0
    snprintf(buf, 24, "%.4f", div)
    return <float>atof(buf)


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
            names_data=None, bint paired=False, int secondary=0, bint tags=True):
        """Map every read of a block; returns ``(primary, [extra_1 .. extra_K])``.

        ``offsets``/``data`` are a RaggedArray of text bases (one record per read;
        interleaved pairs when ``paired``), ``names_offsets``/``names_data`` the
        optional read names. ``primary`` is ``(fields, cigar_offsets, cigar_data,
        tag_offsets, tag_data)``: ``fields`` an ALIGNMENT_DTYPE-layout array with one
        row per read, the CIGARs and the tags RaggedArrays' arrays. Each extra column
        is ``(fields, cigar_offsets, cigar_data, present, tag_offsets, tag_data)``,
        ``present`` a bool array (False: the read has no such alignment).

        The extra records of a read are all its supplementary hits plus at most
        ``secondary`` secondary hits, in minimap2's order; K is at least
        ``secondary`` and grows to the largest number of extra records a read of
        the block has. Tags (``tags``; else the tag arrays are None) are each
        record's optional fields as BAM binary aux bytes: NM ms AS nn tp cm s1 s2 de
        SA MD on mapped records (minimap2's values; MD from the index's sequence),
        MC MQ on primary records whose mate is mapped, rl on all.
        All mapping, record and tag building runs without the GIL.
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
            return self._map(offsets, data, nop, ndp, n, paired, n_sec, tags)
        finally:
            self.busy = False

    cdef int _tags(self, Buf *b, const mm_reg1_t *r, const mm_reg1_t *regs, int n_regs, const uint8_t *read,
                   int qlen, const mm_reg1_t *mate, int mate_qlen, bint primary_record, int rep_len) noexcept nogil:
        """One record's optional tags (BAM aux bytes): minimap2's NM ms AS nn tp cm s1 s2 de SA MD
        on a mapped hit, MC and MQ on a primary record whose mate is mapped, rl on every record."""
        cdef const mm_idx_t *mi = self.index.idx
        cdef uint8_t typ
        if r != NULL:
            if r.p != NULL:
                if (_aux_int(b, b"NM", _nm(r)) < 0 or _aux_int(b, b"ms", r.p.dp_max0) < 0
                        or _aux_int(b, b"AS", r.p.dp_score) < 0 or _aux_int(b, b"nn", r.p.n_ambi) < 0):
                    return -1
            if r.id == r.parent:
                typ = 73 if r.inv else 80  # 'I' / 'P'
            else:
                typ = 105 if r.inv else 83  # 'i' / 'S'
            if _aux_char(b, b"tp", typ) < 0 or _aux_int(b, b"cm", r.cnt) < 0 or _aux_int(b, b"s1", r.score) < 0:
                return -1
            if r.parent == r.id and _aux_int(b, b"s2", r.subsc) < 0:
                return -1
            if r.p != NULL:
                if _aux_float(b, b"de", _divergence(r)) < 0:
                    return -1
                if r.parent == r.id and _put_sa(b, r, regs, n_regs, qlen, mi) < 0:
                    return -1
                if r.re > <int32_t>mi.seq[r.rid].len:
                    return -1
                if _put_md(b, r, read, mi.S, mi.seq[r.rid].offset + <uint64_t>r.rs) < 0:
                    return -1
        if primary_record and mate != NULL and mate.p != NULL:
            if _reserve(b, 4) < 0:
                return -1
            _tag(b, b"MC", 90)
            if _put_cigar(b, mate, mate_qlen) < 0 or _reserve(b, 1) < 0:
                return -1
            _put_char(b, 0)
            if _aux_int(b, b"MQ", mate.mapq) < 0:
                return -1
        if rep_len >= 0 and _aux_int(b, b"rl", rep_len) < 0:
            return -1
        return 0

    cdef object _map(self, const uint64_t[::1] offsets, const uint8_t[::1] data, const uint64_t *nop,
                     const uint8_t *ndp, Py_ssize_t n, bint paired, Py_ssize_t n_sec, bint want_tags):
        cdef Py_ssize_t i, j, k, m, n_taken
        cdef int n_seg = 2 if paired else 1
        # column 0: primary records; columns 1..: the extra records (supplementary, then secondary up to
        # n_sec per read, in minimap2's order); grown while mapping as reads need more
        cdef Py_ssize_t n_cols = 0, cols_cap = n_sec + 2
        cdef Col *cols = <Col*>calloc(cols_cap, sizeof(Col))
        cdef Col *grown
        cdef Col *c
        if cols == NULL:
            raise MemoryError()
        cdef const uint8_t *dp = &data[0] if data.shape[0] > 0 else NULL
        cdef const uint64_t *op = &offsets[0]
        cdef int qlens[2]
        cdef const char *seqs[2]
        cdef const uint8_t *reads[2]
        cdef int n_regs[2]
        cdef mm_reg1_t *regs[2]
        cdef mm_reg1_t *r
        cdef const mm_reg1_t *pri[2]
        cdef const mm_reg1_t *mate
        cdef const char *name
        cdef int failed = 0, t, l2, s, rep_len
        cdef Py_ssize_t read_idx
        cdef char *rc
        cdef const mm_idx_t *mi = self.index.idx
        cdef const mm_mapopt_t *opt = &self.index.mopt
        try:
            with nogil:
                n_cols = 1
                while n_cols <= n_sec:  # at least the asked-for secondary columns
                    n_cols += 1
                for k in range(n_cols):
                    if _col_init(&cols[k], n) < 0:
                        failed = 1
                i = 0
                while i < n and not failed:
                    name = self._name(nop, ndp, i)
                    for s in range(n_seg):
                        qlens[s] = <int>(op[i + s + 1] - op[i + s])
                        reads[s] = dp + op[i + s] if qlens[s] else <const uint8_t*>b""
                        seqs[s] = <const char*>reads[s]
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
                    rep_len = self.buf.rep_len
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
                        mate = pri[1 - s] if paired else NULL
                        c = &cols[0]
                        _record(&c.rows[read_idx], pri[s], mate, n_seg, s)
                        c.present[read_idx] = 1
                        if pri[s] != NULL and _put_cigar(&c.cig, pri[s], qlens[s]) < 0:
                            failed = 1
                        c.cig_off[read_idx + 1] = c.cig.len
                        if want_tags and self._tags(&c.tags, pri[s], regs[s], n_regs[s], reads[s], qlens[s],
                                                    mate, qlens[1 - s] if paired else 0, True, rep_len) < 0:
                            failed = 1
                        c.tag_off[read_idx + 1] = c.tags.len
                        k = 1
                        n_taken = 0
                        for j in range(n_regs[s]):
                            r = &regs[s][j]
                            if r == pri[s]:
                                continue
                            if r.parent != r.id:  # secondary: at most n_sec per read
                                if n_taken >= n_sec:
                                    continue
                                n_taken += 1
                            if k >= n_cols:  # a read with more extra records than any before: a new column
                                if n_cols >= cols_cap:
                                    grown = <Col*>realloc(cols, 2 * cols_cap * sizeof(Col))
                                    if grown == NULL:
                                        failed = 1
                                        break
                                    cols = grown
                                    memset(cols + cols_cap, 0, cols_cap * sizeof(Col))
                                    cols_cap *= 2
                                if _col_init(&cols[n_cols], n) < 0:
                                    failed = 1
                                    break
                                n_cols += 1
                            c = &cols[k]
                            _record(&c.rows[read_idx], r, mate, n_seg, s)
                            c.present[read_idx] = 1
                            if _put_cigar(&c.cig, r, qlens[s]) < 0:
                                failed = 1
                            c.cig_off[read_idx + 1] = c.cig.len
                            if want_tags and self._tags(&c.tags, r, regs[s], n_regs[s], reads[s], qlens[s],
                                                        mate, 0, False, rep_len) < 0:
                                failed = 1
                            c.tag_off[read_idx + 1] = c.tags.len
                            k += 1
                    for s in range(n_seg):
                        for j in range(n_regs[s]):
                            free(regs[s][j].p)
                        free(regs[s])
                    i += n_seg
                if not failed:  # absent rows: zero-length records
                    for k in range(1, n_cols):
                        c = &cols[k]
                        for m in range(n):
                            if not c.present[m]:
                                c.cig_off[m + 1] = c.cig_off[m]
                                c.tag_off[m + 1] = c.tag_off[m]
            if failed:
                raise MemoryError("out of memory while mapping")
            primary = _col_out(&cols[0], n, False, want_tags)
            secs = [_col_out(&cols[k], n, True, want_tags) for k in range(1, n_cols)]
            return primary, secs
        finally:
            for k in range(cols_cap):
                _col_free(&cols[k])
            free(cols)


cdef int _col_init(Col *c, Py_ssize_t n) noexcept nogil:
    """Allocate one output column of ``n`` rows, every row absent until written."""
    cdef Py_ssize_t i
    c.rows = <AlnRec*>malloc((n if n > 0 else 1) * sizeof(AlnRec))
    c.cig_off = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
    c.tag_off = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
    c.present = <uint8_t*>calloc(n if n > 0 else 1, 1)
    if c.rows == NULL or c.cig_off == NULL or c.tag_off == NULL or c.present == NULL:
        return -1
    for i in range(n):
        _no_alignment(&c.rows[i])
    return 0


cdef void _col_free(Col *c) noexcept nogil:
    free(c.rows)
    free(c.cig_off)
    free(c.tag_off)
    free(c.present)
    free(c.cig.data)
    free(c.tags.data)


cdef object _col_out(Col *c, Py_ssize_t n, bint with_present, bint with_tags):
    """A column as numpy arrays: (fields, cigar offsets, cigar data[, present], tag offsets, tag data)."""
    fields = np.empty(n, dtype=_DTYPE)
    if n:
        memcpy(_ptr(fields), c.rows, n * sizeof(AlnRec))
    out = [fields, _copy_u64(c.cig_off, n + 1), _take(&c.cig)]
    if with_present:
        pres = np.empty(n, dtype=np.uint8)
        if n:
            memcpy(_ptr(pres), c.present, n)
        out.append(pres.view(np.bool_))
    if with_tags:
        out += [_copy_u64(c.tag_off, n + 1), _take(&c.tags)]
    else:
        out += [None, None]
    return tuple(out)


cdef object _copy_u64(const uint64_t *src, Py_ssize_t n):
    arr = np.empty(n, dtype=np.uint64)
    memcpy(_ptr(arr), src, n * sizeof(uint64_t))
    return arr


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
