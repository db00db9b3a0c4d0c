# cython: language_level=3
"""A SNAP-style short-read aligner: seed index build, single-end and paired alignment, GIL released.

Written from the published description of SNAP's algorithm (Zaharia et al. 2011; the thesis §5.5;
``reference/persona-original.md`` §6), not from SNAP's code.

**Index** (:func:`fill_tables`, or pass by pass :func:`count_seeds` and :func:`fill_seeds`): the
reference is one array of base codes (A0 C1 G2 T3, N/other 4),
contigs concatenated with runs of N between them and at both ends. Every position whose ``k`` bases
hold no N gives a seed, packed 2 bits per base; only the *canonical* form (the smaller of the seed
and its reverse complement) is stored. The canonical value's top ``2k - key_bits`` bits pick one of
many small open-addressing tables (linear probing, sized ``n * (1 + slack)``), the low ``key_bits``
are the stored key, so an entry is 8 bytes: key (32 bits) and value (32 bits) packed in one word
when ``k <= 24``; for longer seeds keys are 64-bit words beside the values. A value below the
genome length is the single location of that seed; otherwise ``value - genome_len`` indexes the
overflow table ``[n_canonical, n_reverse, locations...]``: the locations where the genome holds the
canonical form, then those where it holds its reverse complement, each ascending. A single location
carries no strand: the aligner reads the genome to tell which form is there.

**Single-end** (:meth:`Mapper.align`): seeds at offsets 0, k, 2k, ... then again shifted by k/2,
k/4, 3k/4, ... (each pass a *wrap*). One lookup gives the hits of the read and of its reverse
complement. A direction with more than ``max_hits`` hits is a popular seed: skipped, not counted.
Each hit votes for a read-start location, gathered per direction in 16-bp bins with a weight (the
number of seeds supporting it). After every seed the unscored candidates are scored best-weight
first with Landau-Vishkin edit distance anchored at the seed (forward from the seed's end, backward
from its start), within ``limit = min(best, max_dist) + extra_depth``; a candidate that missed more
seeds than ``limit`` (corrected for overlapping seeds after a wrap) cannot beat the best and is left.
The search stops when no unseen location can beat the limit (``applied / (wraps + 1) > limit`` in
both directions) or after ``max_seeds`` seeds; a single-end read also stops before its third pass
once the best location has at most one edit on two or more seeds (``Mapper._settled``). Every
scored location gets SNAP's match probability
(substitutions by base quality, gaps 0.001 x 0.5^(len-1), matches and the seed x 0.999 per base);
MAPQ = -10 log10(1 - P(best) / sum P), at most 70, less half the popular seeds beyond ten.

**Paired**: each mate is searched as above; then every proper combination (opposite strands,
forward mate leftmost, template span within ``[min_spacing, max_spacing]``) of the mates' scored
locations is considered, and when none exists, the mates' seeded but unscored candidates inside
the spacing window of the other mate's locations are scored too (rescue among the seed hits). The
best pair (fewest edits in total, then highest probability) wins; its MAPQ is computed over all
proper pairs. With no proper pair each mate keeps its single-end result with MAPQ divided by 3
(SNAP's fallback), as also for pairs with a mate shorter than ``min_read_len``.

Records: CIGAR with soft clips (reads overhanging a contig end are clipped there; a leading or
trailing insertion becomes a clip), SAM flags, mate fields, TLEN 5' to 5' plus one (as the other
backends), tags NM, MD, AS (``AS`` = matches - 4 x mismatches - (6 + len) per gap: SNAP 2's affine
scores applied to the chosen alignment), MC and MQ on a primary record whose mate is mapped.

**Secondary alignments** (``max_secondary`` > 0; SNAP's ``-om``/``-omax``): a read's other scored
locations within ``secondary_delta`` edits of its chosen one (and within ``max_dist``), fewest edits,
then highest probability, then leftmost first; flag 0x100, MAPQ 0, NM/MD/AS, mate fields of the
mate's primary record, no MC/MQ or 0x2. Per mate for pairs. The search depth is raised to
``secondary_delta`` when it is larger than ``extra_depth``, so that such locations are scored.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcpy, memset
from libc.math cimport log10, pow

import numpy as np

from alignment_row cimport AlnRec
from aux_buffer cimport Buf, _aux_int, _md_deletion, _md_end, _md_mismatch, _put_char, _put_uint, _reserve, _tag

ALIGNMENT_FIELDS = [("flag", "<u4"), ("mapq", "<i4"), ("ref_index", "<i4"), ("position", "<i8"),
                    ("next_ref_index", "<i4"), ("next_position", "<i8"), ("template_length", "<i8")]
_DTYPE = np.dtype(ALIGNMENT_FIELDS)
assert _DTYPE.itemsize == sizeof(AlnRec)

DEF MAXK = 63              # largest edit distance one LV half can take
DEF WIDTH = 2 * MAXK + 3   # diagonals -MAXK-1 .. MAXK+1
DEF BIN_SHIFT = 4          # candidates are gathered in 16-bp bins of read-start locations
DEF MERGE_DIST = 31        # scored locations closer than this (same strand) are one location
DEF NO_SCORE = 1 << 20
DEF INVALID = -1000000

cdef enum:
    OP_M = 0   # match
    OP_X = 1   # mismatch
    OP_I = 2   # insertion (read base not in the reference)
    OP_D = 3   # deletion (reference base not in the read)
    OP_S = 4   # soft clip

cdef uint32_t EMPTY = 0xFFFFFFFF
cdef double SNP_PROB = 0.001
cdef double GAP_OPEN_PROB = 0.001
cdef double GAP_EXTEND_PROB = 0.5

cdef uint8_t CODE[256]
cdef int _i
for _i in range(256):
    CODE[_i] = 4
CODE[65] = 0    # A a
CODE[97] = 0
CODE[67] = 1    # C c
CODE[99] = 1
CODE[71] = 2    # G g
CODE[103] = 2
CODE[84] = 3    # T t
CODE[116] = 3
cdef const char *BASES = b"ACGTN"
cdef const char *CIGAR_CHARS = b"MMIDS"

#: P(substitution | phred q): the base is wrong or a SNP (SNAP's table)
cdef double SUB_PROB[128]
for _i in range(128):
    SUB_PROB[_i] = 1.0 - (1.0 - 10.0 ** (-_i / 10.0)) * (1.0 - 0.001)
    if SUB_PROB[_i] > 0.75:
        SUB_PROB[_i] = 0.75
cdef double MATCH_PROB = 1.0 - SNP_PROB


cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    x *= 0xc4ceb9fe1a85ec53ULL
    x ^= x >> 33
    return x


cdef inline uint64_t _table_slot(uint64_t key, uint64_t size) noexcept nogil:
    return ((_mix64(key) >> 32) * size) >> 32


# -- index build --------------------------------------------------------------------------------

def seed_layout(int k):
    """``(key_bits, table_bits)`` for seed length ``k`` (16..32)."""
    if k < 16 or k > 32:
        raise ValueError(f"seed length must be within 16..32, got {k}")
    if k <= 24:
        return 32, 2 * k - 32
    return 2 * k - 16, 16


cdef inline uint64_t _seed_mask(int k) noexcept nogil:
    return ((<uint64_t>1) << (2 * k)) - 1 if k < 32 else ~(<uint64_t>0)


def seed_histogram(const uint8_t[::1] genome, int k, int shift):
    """How many seeds (positions whose ``k`` bases are A/C/G/T) have each canonical value ``>> shift``:
    ``uint64[2 ** (2k - shift)]`` (the build's pass planner cuts the value range with it)."""
    cdef Py_ssize_t g = genome.shape[0], i
    cdef uint64_t mask = _seed_mask(k), f = 0, r = 0
    cdef int run = 0, sh = 2 * (k - 1)
    cdef uint8_t b
    if not 0 <= shift <= 2 * k or 2 * k - shift > 28:
        raise ValueError(f"bad histogram shift {shift} for seed length {k}")
    hist = np.zeros((<uint64_t>1) << (2 * k - shift), dtype=np.uint64)
    cdef uint64_t[::1] h = hist
    with nogil:
        for i in range(g):
            b = genome[i]
            if b > 3:
                run = 0
                f = 0
                r = 0
                continue
            f = ((f << 2) | b) & mask
            r = (r >> 2) | (<uint64_t>(3 - b) << sh)
            run += 1
            if run >= k:
                h[(f if f <= r else r) >> shift] += 1
    return hist


def canonical_seeds(const uint8_t[::1] genome, int k, lo=0, hi=None, Py_ssize_t count=-1):
    """``(canon uint64[n], pos uint32[n], rc uint8[n])`` for every position whose ``k`` bases are A/C/G/T
    and whose canonical seed lies in ``[lo, hi)`` (all when ``hi`` is None), positions ascending: the
    canonical seed, its position and whether the genome holds the reverse complement there.
    ``count``, when known (:func:`seed_histogram`), sizes the arrays exactly (else one per base)."""
    cdef Py_ssize_t g = genome.shape[0], i, n = 0, cap
    cdef uint64_t mask = _seed_mask(k)
    cdef uint64_t f = 0, r = 0, c, vlo = lo
    cdef uint64_t vhi = mask if hi is None else <uint64_t>(hi - 1)   # inclusive upper bound
    cdef int run = 0, shift = 2 * (k - 1)
    cdef uint8_t b
    if g >= 0xFFFFFFF0:
        raise ValueError("genome too large for 32-bit locations")
    if hi is not None and hi <= lo:
        raise ValueError(f"empty seed range [{lo}, {hi})")
    cap = count if count >= 0 else g
    canon = np.empty(cap, dtype=np.uint64)
    pos = np.empty(cap, dtype=np.uint32)
    rcf = np.empty(cap, dtype=np.uint8)
    cdef uint64_t[::1] cv = canon
    cdef uint32_t[::1] pv = pos
    cdef uint8_t[::1] rv = rcf
    with nogil:
        for i in range(g):
            b = genome[i]
            if b > 3:
                run = 0
                f = 0
                r = 0
                continue
            f = ((f << 2) | b) & mask
            r = (r >> 2) | (<uint64_t>(3 - b) << shift)
            run += 1
            if run >= k:
                c = f if f <= r else r
                if c < vlo or c > vhi:
                    continue
                if n >= cap:
                    n = cap + 1
                    break
                cv[n] = c
                rv[n] = 0 if f <= r else 1
                pv[n] = <uint32_t>(i - k + 1)
                n += 1
    if n > cap:
        raise ValueError(f"more seeds in [{lo}, {hi}) than the {count} counted")
    return canon[:n], pos[:n], rcf[:n]


def packed_seeds(const uint8_t[::1] genome, int k, int pos_bits, lo=0, hi=None, Py_ssize_t count=-1):
    """As :func:`canonical_seeds`, each seed packed in one word: ``canon << pos_bits | pos`` (``2k + pos_bits
    <= 64``): a plain sort orders seeds by value, then position. The strand is not stored: the genome
    at ``pos`` tells it (:func:`fill_seeds` reads it there for repeated seeds)."""
    cdef Py_ssize_t g = genome.shape[0], i, n = 0, cap
    cdef uint64_t mask = _seed_mask(k)
    cdef uint64_t f = 0, r = 0, c, vlo = lo
    cdef uint64_t vhi = mask if hi is None else <uint64_t>(hi - 1)
    cdef int run = 0, shift = 2 * (k - 1), sh = pos_bits
    cdef uint8_t b
    if g >= 0xFFFFFFF0 or (<uint64_t>g) >> pos_bits:
        raise ValueError(f"genome of {g} bases does not fit {pos_bits}-bit positions")
    if 2 * k + pos_bits > 64:
        raise ValueError(f"seed length {k} and {pos_bits}-bit positions do not fit one word")
    if hi is not None and hi <= lo:
        raise ValueError(f"empty seed range [{lo}, {hi})")
    cap = count if count >= 0 else g
    packed = np.empty(cap, dtype=np.uint64)
    cdef uint64_t[::1] pk = packed
    with nogil:
        for i in range(g):
            b = genome[i]
            if b > 3:
                run = 0
                f = 0
                r = 0
                continue
            f = ((f << 2) | b) & mask
            r = (r >> 2) | (<uint64_t>(3 - b) << shift)
            run += 1
            if run >= k:
                c = f if f <= r else r
                if c < vlo or c > vhi:
                    continue
                if n >= cap:
                    n = cap + 1
                    break
                pk[n] = (c << sh) | <uint64_t>(i - k + 1)
                n += 1
    if n > cap:
        raise ValueError(f"more seeds in [{lo}, {hi}) than the {count} counted")
    return packed[:n]


cdef struct Seeds:       # one sorted pass: (canon, pos, rc) arrays, or packed words (pos NULL)
    const uint64_t *v
    const uint32_t *pos
    const uint8_t *rc
    int sh               # canonical value = v >> sh
    uint64_t pmask
    const uint8_t *genome   # packed words: the strand is read from the genome
    int k


cdef inline uint64_t _s_canon(const Seeds *s, Py_ssize_t i) noexcept nogil:
    return s.v[i] >> s.sh


cdef inline uint32_t _s_pos(const Seeds *s, Py_ssize_t i) noexcept nogil:
    return s.pos[i] if s.pos != NULL else <uint32_t>(s.v[i] & s.pmask)


cdef inline uint8_t _s_rc(const Seeds *s, Py_ssize_t i) noexcept nogil:
    """1 where the genome holds the canonical seed's reverse complement (0 for a palindrome)."""
    cdef uint64_t f = 0
    cdef int j
    cdef const uint8_t *g
    if s.pos != NULL:
        return s.rc[i]
    g = s.genome + (s.v[i] & s.pmask)
    for j in range(s.k):
        f = (f << 2) | g[j]
    return 0 if f == (s.v[i] >> s.sh) else 1


cdef Py_ssize_t _seeds_view(Seeds *s, object values, object pos, object rc, int pos_bits) except -1:
    """Fill ``s`` from sorted ``values`` (canonical seeds, with ``pos``/``rc``; or packed words when
    ``pos_bits`` > 0 and ``pos`` is None and ``rc`` the genome); returns the seed count."""
    cdef const uint64_t[::1] v = values
    cdef const uint32_t[::1] pv
    cdef const uint8_t[::1] rv
    cdef Py_ssize_t n = v.shape[0]
    s.v = &v[0] if n else NULL
    cdef const uint8_t[::1] gv
    if pos_bits > 0:
        if pos is not None or rc is None:
            raise ValueError("packed seeds carry their positions: pass pos None and the genome as rc")
        gv = rc
        s.genome = &gv[0]
        s.pos = NULL
        s.rc = NULL
        s.sh = pos_bits
        s.pmask = ((<uint64_t>1) << pos_bits) - 1
    else:
        pv = pos
        rv = rc
        if pv.shape[0] != n or rv.shape[0] != n:
            raise ValueError("canon, pos and rc must have the same length")
        s.pos = &pv[0] if n else NULL
        s.rc = &rv[0] if n else NULL
        s.sh = 0
        s.pmask = 0
    return n


def count_seeds(values, int k, uint64_t[::1] counts, int pos_bits=0):
    """Add the distinct canonical seeds of one sorted pass (canonical values, or packed words when
    ``pos_bits`` > 0) to their tables' ``counts``; returns the overflow entries the pass's repeated
    seeds take."""
    cdef int key_bits, table_bits
    key_bits, table_bits = seed_layout(k)
    if counts.shape[0] != (1 << table_bits):
        raise ValueError(f"counts must have {1 << table_bits} entries")
    cdef Seeds s
    cdef Py_ssize_t n, i, j
    cdef uint64_t n_over = 0, c
    cdef const uint64_t[::1] keep = values   # holds the buffer while its pointer is used
    s.v = NULL
    s.pos = NULL
    s.rc = NULL
    s.sh = pos_bits
    n = keep.shape[0]
    if n:
        s.v = &keep[0]
    with nogil:
        i = 0
        while i < n:
            c = _s_canon(&s, i)
            j = i + 1
            while j < n and _s_canon(&s, j) == c:
                j += 1
            counts[c >> key_bits] += 1
            if j - i > 1:
                n_over += 2 + <uint64_t>(j - i)
            i = j
    return n_over


def table_offsets(counts, double slack):
    """Each table's first slot (``uint64[T+1]``): ``ceil(distinct * (1 + slack)) + 1`` slots a table."""
    counts = np.asarray(counts, dtype=np.uint64)
    sizes = np.where(counts > 0, np.ceil(counts * (1.0 + slack)).astype(np.uint64) + 1, 0).astype(np.uint64)
    offsets = np.zeros(len(counts) + 1, dtype=np.uint64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


def fill_seeds(values, pos_sorted, rc_sorted, int k, const uint64_t[::1] off, uint64_t genome_len, slots,
               uint32_t[::1] ov, uint64_t o, int pos_bits=0):
    """Insert one sorted pass into the tables (``slots``: uint64[S], or ``(keys uint64[S], vals uint32[S])``
    when keys are wider than 32 bits; empty slots pre-filled) and its repeated seeds into the overflow
    table from entry ``o``; returns the next free overflow entry. The pass is ``values`` (canonical
    seeds) with ``pos_sorted``/``rc_sorted``, or packed words (:func:`packed_seeds`) with ``pos_bits``
    > 0, ``pos_sorted`` None and the genome as ``rc_sorted``. Passes in ascending canonical order give
    exactly the tables of one pass over every seed."""
    cdef int key_bits, table_bits
    key_bits, table_bits = seed_layout(k)
    cdef Seeds s
    cdef Py_ssize_t n = _seeds_view(&s, values, pos_sorted, rc_sorted, pos_bits), i, j, e
    s.k = k
    cdef const uint64_t[::1] keep_v = values   # holds the buffer while its pointer is used
    cdef uint64_t t, size, slot, base, key, value, nf, c
    cdef uint64_t key_mask = ((<uint64_t>1) << key_bits) - 1
    cdef bint wide = key_bits > 32
    cdef uint64_t[::1] sl
    cdef uint64_t[::1] keys
    cdef uint32_t[::1] vals
    if wide:
        keys, vals = slots
        sl = np.zeros(1, dtype=np.uint64)
    else:
        sl = slots
        keys = np.zeros(1, dtype=np.uint64)
        vals = np.zeros(1, dtype=np.uint32)
    with nogil:
        i = 0
        while i < n:
            c = _s_canon(&s, i)
            j = i + 1
            while j < n and _s_canon(&s, j) == c:
                j += 1
            if j - i == 1:
                value = _s_pos(&s, i)
            else:
                value = genome_len + o
                nf = 0
                for e in range(i, j):
                    if _s_rc(&s, e) == 0:
                        nf += 1
                ov[o] = <uint32_t>nf
                ov[o + 1] = <uint32_t>(j - i - nf)
                o += 2
                for e in range(i, j):
                    if _s_rc(&s, e) == 0:
                        ov[o] = _s_pos(&s, e)
                        o += 1
                for e in range(i, j):
                    if _s_rc(&s, e) != 0:
                        ov[o] = _s_pos(&s, e)
                        o += 1
            t = c >> key_bits
            key = c & key_mask
            base = off[t]
            size = off[t + 1] - base
            slot = _table_slot(key, size)
            if wide:
                while vals[base + slot] != EMPTY:
                    slot += 1
                    if slot == size:
                        slot = 0
                keys[base + slot] = key
                vals[base + slot] = <uint32_t>value
            else:
                while <uint32_t>sl[base + slot] != EMPTY:
                    slot += 1
                    if slot == size:
                        slot = 0
                sl[base + slot] = (key << 32) | value
            i = j
    return o


def fill_tables(const uint64_t[::1] canon_sorted, const uint32_t[::1] pos_sorted, const uint8_t[::1] rc_sorted,
                int k, double slack, uint64_t genome_len):
    """The hash tables from all seeds at once, sorted by canonical value (positions ascending within a
    value): :func:`count_seeds`, :func:`table_offsets` and :func:`fill_seeds` in one pass.

    Returns ``(table_offsets uint64[T+1], slots uint64[S] or (keys uint64[S], vals uint32[S]), overflow uint32)``.
    """
    key_bits, table_bits = seed_layout(k)
    counts = np.zeros(1 << table_bits, dtype=np.uint64)
    n_over = count_seeds(canon_sorted, k, counts)
    if genome_len + n_over >= EMPTY:
        raise ValueError("index too large for 32-bit values")
    offsets = table_offsets(counts, slack)
    n_slots = int(offsets[-1])
    overflow = np.zeros(max(n_over, 1), dtype=np.uint32)
    if key_bits > 32:
        slots = (np.zeros(max(n_slots, 1), dtype=np.uint64), np.full(max(n_slots, 1), EMPTY, dtype=np.uint32))
    else:
        slots = np.full(max(n_slots, 1), <uint64_t>EMPTY, dtype=np.uint64)
    fill_seeds(canon_sorted, pos_sorted, rc_sorted, k, offsets, genome_len, slots, overflow, 0)
    return offsets, slots, overflow


# -- the loaded index ---------------------------------------------------------------------------

cdef struct IdxView:     # what the aligner reads of a SnapIndex (raw pointers, usable without the GIL)
    const uint8_t *genome
    uint64_t genome_len
    int seed_len
    int key_bits
    bint wide
    const uint64_t *tab_off
    const uint64_t *slots
    const uint64_t *keys
    const uint32_t *vals
    const uint32_t *overflow
    int64_t *contig_start
    int64_t *contig_end
    int n_contigs


cdef extern from *:
    void __builtin_prefetch(const void *p) nogil


cdef void _prefetch_pass(const IdxView *ix, const uint8_t *R, int L, int off, bint text=False) noexcept nogil:
    """Ask for the hash slots of one pass of seeds (offsets off, off + k, ...) ahead of their lookups:
    the lookups are cache misses, and issued together (or a read ahead) their latencies overlap.
    ``R`` holds base codes, or text bases when ``text``."""
    cdef int k = ix.seed_len, i, n = 0
    cdef uint64_t s, r, cn, t, key, base, size, slot
    cdef uint8_t b
    cdef bint bad
    while off + k <= L and n < 8:
        s = 0
        r = 0
        bad = 0
        for i in range(k):
            b = CODE[R[off + i]] if text else R[off + i]
            if b > 3:
                bad = 1
                break
            s = (s << 2) | b
            r |= <uint64_t>(3 - b) << (2 * i)
        if not bad:
            cn = s if s <= r else r
            t = cn >> ix.key_bits
            key = cn & (((<uint64_t>1) << ix.key_bits) - 1)
            base = ix.tab_off[t]
            size = ix.tab_off[t + 1] - base
            if size:
                slot = _table_slot(key, size)
                if ix.wide:
                    __builtin_prefetch(&ix.vals[base + slot])
                    __builtin_prefetch(&ix.keys[base + slot])
                else:
                    __builtin_prefetch(&ix.slots[base + slot])
        off += k
        n += 1


cdef int _contig_of(const IdxView *ix, int64_t p) noexcept nogil:
    """The contig holding genome position ``p``, or the one before it (binary search)."""
    cdef int lo = 0, hi = ix.n_contigs - 1, mid
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if ix.contig_start[mid] <= p:
            lo = mid
        else:
            hi = mid - 1
    return lo


cdef uint32_t _lookup(const IdxView *ix, uint64_t canon) noexcept nogil:
    """The value stored for canonical seed ``canon``, or EMPTY."""
    cdef uint64_t t = canon >> ix.key_bits
    cdef uint64_t key = canon & (((<uint64_t>1) << ix.key_bits) - 1)
    cdef uint64_t base = ix.tab_off[t], size = ix.tab_off[t + 1] - base, slot, w
    if size == 0:
        return EMPTY
    slot = _table_slot(key, size)
    if ix.wide:
        while True:
            if ix.vals[base + slot] == EMPTY:
                return EMPTY
            if ix.keys[base + slot] == key:
                return ix.vals[base + slot]
            slot += 1
            if slot == size:
                slot = 0
    while True:
        w = ix.slots[base + slot]
        if <uint32_t>w == EMPTY:
            return EMPTY
        if (w >> 32) == key:
            return <uint32_t>w
        slot += 1
        if slot == size:
            slot = 0


cdef class SnapIndex:
    """The arrays of a built index (numpy arrays or memory maps, shared read-only by every Mapper)."""

    cdef readonly int seed_len
    cdef readonly int key_bits
    cdef readonly uint64_t genome_len
    cdef readonly object arrays   # keeps the buffers alive
    cdef const uint8_t *genome
    cdef const uint64_t *tab_off
    cdef const uint64_t *slots
    cdef const uint64_t *keys
    cdef const uint32_t *vals
    cdef const uint32_t *overflow
    cdef bint wide
    cdef int64_t *contig_start
    cdef int64_t *contig_end
    cdef readonly int n_contigs
    cdef IdxView view

    def __cinit__(self, int seed_len, genome, table_offsets, slots, overflow, contig_starts, contig_lengths):
        cdef const uint8_t[::1] g = genome
        cdef const uint64_t[::1] to = table_offsets
        cdef const uint32_t[::1] ovv = overflow
        cdef const uint64_t[::1] sv
        cdef const uint64_t[::1] kv
        cdef const uint32_t[::1] vv
        cdef int i
        self.key_bits, tb = seed_layout(seed_len)
        self.seed_len = seed_len
        if to.shape[0] != (1 << tb) + 1:
            raise ValueError(f"table offsets: {to.shape[0]} entries, expected {(1 << tb) + 1}")
        self.wide = self.key_bits > 32
        self.genome_len = g.shape[0]
        self.genome = &g[0]
        self.tab_off = &to[0]
        self.overflow = &ovv[0]
        if self.wide:
            kv = slots[0]
            vv = slots[1]
            if kv.shape[0] < to[to.shape[0] - 1] or vv.shape[0] != kv.shape[0]:
                raise ValueError("hash table arrays shorter than the table offsets say")
            self.keys = &kv[0]
            self.vals = &vv[0]
            self.slots = NULL
        else:
            sv = slots
            if sv.shape[0] < to[to.shape[0] - 1]:
                raise ValueError("hash table shorter than the table offsets say")
            self.slots = &sv[0]
        starts = np.ascontiguousarray(contig_starts, dtype=np.int64)
        lengths = np.ascontiguousarray(contig_lengths, dtype=np.int64)
        self.n_contigs = len(starts)
        if self.n_contigs == 0 or len(lengths) != self.n_contigs:
            raise ValueError("the index needs a contig table")
        self.contig_start = <int64_t*>malloc(self.n_contigs * sizeof(int64_t))
        self.contig_end = <int64_t*>malloc(self.n_contigs * sizeof(int64_t))
        if self.contig_start == NULL or self.contig_end == NULL:
            raise MemoryError()
        for i in range(self.n_contigs):
            self.contig_start[i] = starts[i]
            self.contig_end[i] = starts[i] + lengths[i]
            if i and self.contig_start[i] < self.contig_end[i - 1]:
                raise ValueError("contigs overlap in the index")
        if self.contig_end[self.n_contigs - 1] > <int64_t>self.genome_len:
            raise ValueError("contig table runs past the genome")
        self.arrays = (genome, table_offsets, slots, overflow)
        self.view.genome = self.genome
        self.view.genome_len = self.genome_len
        self.view.seed_len = self.seed_len
        self.view.key_bits = self.key_bits
        self.view.wide = self.wide
        self.view.tab_off = self.tab_off
        self.view.slots = self.slots
        self.view.keys = self.keys
        self.view.vals = self.vals
        self.view.overflow = self.overflow
        self.view.contig_start = self.contig_start
        self.view.contig_end = self.contig_end
        self.view.n_contigs = self.n_contigs

    def __dealloc__(self):
        free(self.contig_start)
        free(self.contig_end)

    def hits(self, bytes seed):
        """``(locations where the genome holds seed, locations where it holds its reverse complement)``
        (for tests and inspection)."""
        cdef int k = self.seed_len, i
        cdef uint64_t s = 0, r = 0, c
        cdef uint8_t b
        if len(seed) != k:
            raise ValueError(f"seed must have {k} bases")
        for i in range(k):
            b = CODE[seed[i]]
            if b > 3:
                return [], []
            s = (s << 2) | b
            r |= <uint64_t>(3 - b) << (2 * i)
        c = s if s <= r else r
        v = _lookup(&self.view, c)
        if v == EMPTY:
            return [], []
        if v < self.genome_len:
            p = int(v)
            same = True
            for i in range(k):
                if self.genome[p + i] != CODE[seed[i]]:
                    same = False
            return ([p], []) if same else ([], [p])
        o = v - self.genome_len
        nf, nr = self.overflow[o], self.overflow[o + 1]
        fl = [int(self.overflow[o + 2 + i]) for i in range(nf)]
        rl = [int(self.overflow[o + 2 + nf + i]) for i in range(nr)]
        if s == c and s == r:
            return fl, fl
        return (fl, rl) if s == c else (rl, fl)


# -- per-thread scratch ---------------------------------------------------------------------------

cdef struct Cand:
    int64_t key          # (bin << 1) | direction
    int64_t loc          # read start implied by the first hit
    int64_t seed_pos     # genome position of that hit's seed
    int32_t seed_off     # offset of the seed in the read (in the direction's orientation)
    int32_t weight
    int32_t last_seed
    int32_t state        # 0 unscored, 1 scored, 2 scored: beyond the limit, 3 merged into another
    int32_t d            # edit distance (state 1)
    int32_t dir
    double prob
    int64_t start        # aligned reference span (state 1)
    int64_t end

cdef struct Run:
    int32_t op
    int32_t len
    int32_t ppos         # pattern position of the run's first base

cdef struct ReadCtx:
    int32_t L
    uint8_t *codes[2]    # read, reverse complement
    uint8_t *quals[2]    # phred values in the same orientations
    int32_t cap_len
    Cand *cands
    int32_t n_cands
    int32_t cap_cands
    int32_t *table       # candidate hash: index + 1, 0 empty
    int32_t table_cap
    int32_t *used        # slots of table in use (cleared per read)
    int64_t *bkey        # 16-bp bins of read starts (per direction): seeds voting for the area
    int32_t *bweight
    int32_t *blast
    int32_t *btable
    int32_t *bused
    int32_t n_bins
    int32_t *order       # scoring order scratch
    int32_t *scored      # indices of scored candidates
    int32_t n_scored
    int32_t applied[2]
    int32_t wraps
    int32_t popular
    int32_t best_d
    int32_t best
    int32_t n_seeds_used
    int32_t prefetched   # the first pass's slots were asked for already

cdef struct Result:      # one read's chosen alignment
    int32_t mapped
    int32_t ref
    int64_t pos
    int64_t end
    int32_t rev
    int32_t mapq
    int32_t nm
    int32_t score
    int32_t n_runs
    Run *runs            # final runs (M/X/I/D/S) in read order
    int32_t cap_runs


cdef int _grow_ctx(ReadCtx *c, int32_t L) noexcept nogil:
    cdef int d
    if L <= c.cap_len:
        return 0
    cdef int32_t cap = c.cap_len * 2 if c.cap_len else 512
    while cap < L:
        cap *= 2
    for d in range(2):
        free(c.codes[d])
        free(c.quals[d])
        c.codes[d] = <uint8_t*>malloc(cap)
        c.quals[d] = <uint8_t*>malloc(cap)
        if c.codes[d] == NULL or c.quals[d] == NULL:
            return -1
    c.cap_len = cap
    return 0


cdef int _init_ctx(ReadCtx *c, int32_t max_cands) noexcept nogil:
    memset(c, 0, sizeof(ReadCtx))
    c.cap_cands = max_cands
    c.table_cap = 1
    while c.table_cap < 2 * max_cands:
        c.table_cap *= 2
    c.cands = <Cand*>malloc(max_cands * sizeof(Cand))
    c.table = <int32_t*>calloc(c.table_cap, sizeof(int32_t))
    c.used = <int32_t*>malloc(max_cands * sizeof(int32_t))
    c.order = <int32_t*>malloc(max_cands * sizeof(int32_t))
    c.scored = <int32_t*>malloc(max_cands * sizeof(int32_t))
    c.bkey = <int64_t*>malloc(max_cands * sizeof(int64_t))
    c.bweight = <int32_t*>malloc(max_cands * sizeof(int32_t))
    c.blast = <int32_t*>malloc(max_cands * sizeof(int32_t))
    c.btable = <int32_t*>calloc(c.table_cap, sizeof(int32_t))
    c.bused = <int32_t*>malloc(max_cands * sizeof(int32_t))
    if c.cands == NULL or c.table == NULL or c.used == NULL or c.order == NULL or c.scored == NULL:
        return -1
    if c.bkey == NULL or c.bweight == NULL or c.blast == NULL or c.btable == NULL or c.bused == NULL:
        return -1
    return _grow_ctx(c, 512)


cdef void _free_ctx(ReadCtx *c) noexcept nogil:
    cdef int d
    for d in range(2):
        free(c.codes[d])
        free(c.quals[d])
    free(c.cands)
    free(c.table)
    free(c.used)
    free(c.order)
    free(c.scored)
    free(c.bkey)
    free(c.bweight)
    free(c.blast)
    free(c.btable)
    free(c.bused)


cdef void _reset_ctx(ReadCtx *c) noexcept nogil:
    cdef int32_t i
    for i in range(c.n_cands):
        c.table[c.used[i]] = 0
    for i in range(c.n_bins):
        c.btable[c.bused[i]] = 0
    c.n_cands = 0
    c.n_bins = 0
    c.n_scored = 0
    c.applied[0] = 0
    c.applied[1] = 0
    c.wraps = 0
    c.popular = 0
    c.best_d = NO_SCORE
    c.best = -1
    c.n_seeds_used = 0
    c.prefetched = 0


cdef inline int32_t _find(ReadCtx *c, int64_t key) noexcept nogil:
    """Index of the candidate with ``key`` or -1."""
    cdef uint64_t mask = c.table_cap - 1
    cdef uint64_t s = _mix64(<uint64_t>key) & mask
    cdef int32_t v
    while True:
        v = c.table[s]
        if v == 0:
            return -1
        if c.cands[v - 1].key == key:
            return v - 1
        s = (s + 1) & mask


cdef inline int32_t _bin_weight(ReadCtx *c, int64_t key) noexcept nogil:
    """Seeds voting for bin ``key`` (0 if none)."""
    cdef uint64_t mask = c.table_cap - 1
    cdef uint64_t s = _mix64(<uint64_t>key) & mask
    cdef int32_t v
    while True:
        v = c.btable[s]
        if v == 0:
            return 0
        if c.bkey[v - 1] == key:
            return c.bweight[v - 1]
        s = (s + 1) & mask


cdef inline void _add_bin(ReadCtx *c, int64_t key, int32_t seed_id) noexcept nogil:
    cdef uint64_t mask = c.table_cap - 1
    cdef uint64_t s = _mix64(<uint64_t>key) & mask
    cdef int32_t v
    while True:
        v = c.btable[s]
        if v == 0:
            break
        if c.bkey[v - 1] == key:
            if c.blast[v - 1] != seed_id:
                c.bweight[v - 1] += 1
                c.blast[v - 1] = seed_id
            return
        s = (s + 1) & mask
    if c.n_bins >= c.cap_cands:
        return
    c.bkey[c.n_bins] = key
    c.bweight[c.n_bins] = 1
    c.blast[c.n_bins] = seed_id
    c.bused[c.n_bins] = <int32_t>s
    c.n_bins += 1
    c.btable[s] = c.n_bins


cdef inline int _add_hit(ReadCtx *c, int dir, int64_t loc, int64_t seed_pos, int32_t seed_off,
                         int32_t seed_id) noexcept nogil:
    """One seed hit voting for read start ``loc`` (exactly: one candidate per diagonal, each anchored
    at its own seed) and for its 16-bp bin in direction ``dir``."""
    cdef int64_t key = (loc << 1) | dir
    cdef uint64_t mask = c.table_cap - 1
    cdef uint64_t s = _mix64(<uint64_t>key) & mask
    cdef int32_t v
    cdef Cand *x
    _add_bin(c, ((loc >> BIN_SHIFT) << 1) | dir, seed_id)
    while True:
        v = c.table[s]
        if v == 0:
            break
        x = &c.cands[v - 1]
        if x.key == key:
            if x.last_seed != seed_id:
                x.weight += 1
                x.last_seed = seed_id
            return 0
        s = (s + 1) & mask
    if c.n_cands >= c.cap_cands:
        return 0   # full (only with absurd max_seeds x max_hits): the hit is dropped
    x = &c.cands[c.n_cands]
    x.key = key
    x.loc = loc
    x.seed_pos = seed_pos
    x.seed_off = seed_off
    x.weight = 1
    x.last_seed = seed_id
    x.state = 0
    x.d = NO_SCORE
    x.dir = dir
    x.prob = 0.0
    c.used[c.n_cands] = <int32_t>s
    c.n_cands += 1
    c.table[s] = c.n_cands
    return 0


# -- Landau-Vishkin --------------------------------------------------------------------------------

cdef struct LV:
    int32_t L[MAXK + 1][WIDTH]
    uint8_t op[MAXK + 1][WIDTH]


cdef int _lv(LV *w, const uint8_t *P, int m, const uint8_t *T, int n, int step, int K,
             int *d_out) noexcept nogil:
    """Fewest edits aligning all ``m`` pattern bases to a prefix of the text (``step`` -1: both read
    backwards from the given pointers); -1 when more than ``K``. Keeps the table for :func:`_lv_runs`.
    The text must hold at least ``m + K + 1`` bases."""
    cdef int i = 0, e, d, k, best, o, v
    cdef int ds[2 * MAXK + 1]
    if K > MAXK:
        K = MAXK
    while i < m and P[i * step] == T[i * step] and P[i * step] < 4:
        i += 1
    if i >= m:
        d_out[0] = 0
        return 0
    w.L[0][MAXK + 1] = i
    w.L[0][MAXK] = INVALID
    w.L[0][MAXK + 2] = INVALID
    for e in range(1, K + 1):
        # diagonals in the order 0, 1, -1, 2, -2, ...: the first to reach the end wins ties
        ds[0] = 0
        for k in range(1, e + 1):
            ds[2 * k - 1] = k
            ds[2 * k] = -k
        for k in range(2 * e + 1):
            d = ds[k] + MAXK + 1
            best = w.L[e - 1][d] + 1 if (ds[k] < e and ds[k] > -e) else INVALID   # substitution
            o = OP_X
            v = w.L[e - 1][d - 1] if ds[k] - 1 > -e else INVALID                 # deletion: text advances
            if v > best:
                best = v
                o = OP_D
            v = w.L[e - 1][d + 1] + 1 if ds[k] + 1 < e else INVALID              # insertion: read advances
            if v > best:
                best = v
                o = OP_I
            if best > m:
                best = m
            while best < m and P[best * step] == T[(best + ds[k]) * step] and P[best * step] < 4:
                best += 1
            w.L[e][d] = best
            w.op[e][d] = <uint8_t>o
            if best >= m:
                d_out[0] = ds[k]
                return e
        w.L[e][MAXK + 1 - e - 1] = INVALID
        w.L[e][MAXK + 1 + e + 1] = INVALID
    return -1


cdef int _lv_runs(LV *w, int e, int dg, int m, Run *out) noexcept nogil:
    """The edit script of the alignment :func:`_lv` found (``e`` edits, ending on diagonal ``dg``) as
    runs in pattern order; returns the number of runs."""
    cdef int n = 0, pos = m, o, src, v0, s, i, j
    cdef Run t
    cdef int d = dg
    while e > 0:
        o = w.op[e][d + MAXK + 1]
        if o == OP_X:
            src = d
        elif o == OP_I:
            src = d + 1
        else:
            src = d - 1
        v0 = w.L[e - 1][src + MAXK + 1]
        s = v0 if o == OP_D else v0 + 1
        if pos > s:
            out[n].op = OP_M
            out[n].len = pos - s
            out[n].ppos = s
            n += 1
        out[n].op = o
        out[n].len = 1
        out[n].ppos = v0
        n += 1
        pos = v0
        e -= 1
        d = src
    if pos > 0:
        out[n].op = OP_M
        out[n].len = pos
        out[n].ppos = 0
        n += 1
    # reverse into pattern order, merging neighbours of one kind
    i = 0
    j = n - 1
    while i < j:
        t = out[i]
        out[i] = out[j]
        out[j] = t
        i += 1
        j -= 1
    j = 0
    for i in range(n):
        if j > 0 and out[j - 1].op == out[i].op:
            out[j - 1].len += out[i].len
        else:
            out[j] = out[i]
            j += 1
    return j


# -- output buffers -----------------------------------------------------------------------------------

cdef int _put_cigar(Buf *b, const Result *r) noexcept nogil:
    cdef int i, op, ln
    if _reserve(b, <size_t>r.n_runs * 12 + 1) < 0:
        return -1
    i = 0
    while i < r.n_runs:
        op = r.runs[i].op
        ln = r.runs[i].len
        # M and X both print as M: merge them
        while i + 1 < r.n_runs and (op == OP_M or op == OP_X) and (r.runs[i + 1].op == OP_M or r.runs[i + 1].op == OP_X):
            i += 1
            ln += r.runs[i].len
        _put_uint(b, <uint32_t>ln)
        _put_char(b, <uint8_t>CIGAR_CHARS[op])
        i += 1
    return 0


# -- the mapper --------------------------------------------------------------------------------------

cdef int _cmp_order(const void *a, const void *b) noexcept nogil:
    """Scoring order: weight descending, then key ascending (deterministic)."""
    cdef const int64_t *x = <const int64_t*>a
    cdef const int64_t *y = <const int64_t*>b
    if x[0] != y[0]:
        return -1 if x[0] > y[0] else 1
    if x[1] != y[1]:
        return -1 if x[1] < y[1] else 1
    return 0


cdef class Mapper:
    """Aligns blocks of reads against a :class:`SnapIndex`; one thread at a time (owns its scratch)."""

    cdef SnapIndex index
    cdef bint busy
    cdef int max_dist, max_seeds, max_hits, extra_depth, min_spacing, max_spacing, min_read_len
    cdef int n_shifts
    cdef int shifts[64]
    cdef ReadCtx ctx[2]
    cdef LV *lv
    cdef Run *runs_a
    cdef Run *runs_b
    cdef int cap_runs
    cdef Result res[2]
    cdef int32_t chosen[2]   # the candidate behind res[s] (-1: unmapped), for its secondaries
    cdef int max_secondary, secondary_delta
    cdef Result *sres        # one read's secondary alignments (max_secondary of them)
    cdef int32_t *sec_idx    # candidate indices while choosing them
    cdef int64_t *sortbuf
    cdef Buf cig
    cdef Buf tags

    def __cinit__(self, SnapIndex index, int max_dist=14, int max_seeds=25, int max_hits=300,
                  int extra_depth=2, int min_spacing=50, int max_spacing=1000, int min_read_len=50,
                  int max_secondary=0, int secondary_delta=0):
        if index is None:
            raise ValueError("Mapper needs a SnapIndex")
        if not 0 <= max_dist <= MAXK - 3:
            raise ValueError(f"max_dist must be within 0..{MAXK - 3}, got {max_dist}")
        if max_seeds < 1 or max_hits < 1 or extra_depth < 0:
            raise ValueError("max_seeds and max_hits must be >= 1, extra_depth >= 0")
        if min_spacing < 0 or max_spacing < min_spacing:
            raise ValueError(f"bad pair spacing {min_spacing}..{max_spacing}")
        if max_secondary < 0 or secondary_delta < 0 or secondary_delta > MAXK - 3:
            raise ValueError(f"max_secondary must be >= 0 and secondary_delta within 0..{MAXK - 3}")
        self.index = index
        self.max_secondary = max_secondary
        self.secondary_delta = secondary_delta
        if max_secondary > 0 and secondary_delta > extra_depth:
            # locations up to secondary_delta edits worse than the best must be scored to be reported
            extra_depth = secondary_delta
        self.max_dist = max_dist
        self.max_seeds = max_seeds
        self.max_hits = max_hits
        self.extra_depth = extra_depth
        self.min_spacing = min_spacing
        self.max_spacing = max_spacing
        self.min_read_len = min_read_len
        self._make_shifts(index.seed_len)
        cdef int max_cands = 4 * max_seeds * max_hits + 16
        cdef int i
        for i in range(2):
            if _init_ctx(&self.ctx[i], max_cands) < 0:
                raise MemoryError()
        self.sortbuf = <int64_t*>malloc(2 * max_cands * sizeof(int64_t))
        self.sec_idx = <int32_t*>malloc(max_cands * sizeof(int32_t))
        self.sres = <Result*>calloc(max_secondary if max_secondary > 0 else 1, sizeof(Result))
        self.lv = <LV*>malloc(sizeof(LV))
        self.cap_runs = 0
        self.runs_a = NULL
        self.runs_b = NULL
        if self.sortbuf == NULL or self.lv == NULL or self.sec_idx == NULL or self.sres == NULL \
                or self._grow_runs(1024) < 0:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        for i in range(2):
            _free_ctx(&self.ctx[i])
            free(self.res[i].runs)
        if self.sres != NULL:
            for i in range(self.max_secondary):
                free(self.sres[i].runs)
        free(self.sres)
        free(self.sec_idx)
        free(self.sortbuf)
        free(self.lv)
        free(self.runs_a)
        free(self.runs_b)
        free(self.cig.data)
        free(self.tags.data)

    cdef int _grow_runs(self, int need) noexcept nogil:
        cdef int i
        if need <= self.cap_runs:
            return 0
        cdef int cap = self.cap_runs * 2 if self.cap_runs else 1024
        while cap < need:
            cap *= 2
        free(self.runs_a)
        free(self.runs_b)
        self.runs_a = <Run*>malloc(cap * sizeof(Run))
        self.runs_b = <Run*>malloc(cap * sizeof(Run))
        for i in range(2):
            free(self.res[i].runs)
            self.res[i].runs = <Run*>malloc(cap * sizeof(Run))
            if self.res[i].runs == NULL:
                return -1
        for i in range(self.max_secondary):
            free(self.sres[i].runs)
            self.sres[i].runs = <Run*>malloc(cap * sizeof(Run))
            if self.sres[i].runs == NULL:
                return -1
        if self.runs_a == NULL or self.runs_b == NULL:
            return -1
        self.cap_runs = cap
        return 0

    cdef void _make_shifts(self, int k):
        """Seed offsets of each pass over the read: 0, k/2, k/4, 3k/4, k/8, ... (distinct, < k)."""
        cdef int den = 2, num, s, j, seen
        self.n_shifts = 1
        self.shifts[0] = 0
        while den <= 64 and self.n_shifts < k and self.n_shifts < 64:
            for num in range(1, den, 2):
                s = num * k // den
                seen = 0
                for j in range(self.n_shifts):
                    if self.shifts[j] == s:
                        seen = 1
                if not seen and self.n_shifts < 64:
                    self.shifts[self.n_shifts] = s
                    self.n_shifts += 1
            den *= 2

    # -- one read ----------------------------------------------------------------------------------

    cdef int _load_read(self, ReadCtx *c, const uint8_t *bases, const uint8_t *quals, int32_t L) noexcept nogil:
        """Codes and qualities of the read and its reverse complement; returns the number of Ns or -1."""
        cdef int32_t i, n_n = 0
        cdef uint8_t b, q
        if _grow_ctx(c, L) < 0:
            return -1
        c.L = L
        for i in range(L):
            b = CODE[bases[i]]
            if b > 3:
                n_n += 1
            c.codes[0][i] = b
            c.codes[1][L - 1 - i] = 3 - b if b < 4 else 4
            if quals != NULL:
                q = quals[i] - 33 if quals[i] >= 33 else 0
                if q > 93:
                    q = 93
            else:
                q = 30
            c.quals[0][i] = q
            c.quals[1][L - 1 - i] = q
        return n_n

    cdef int _score(self, ReadCtx *c, Cand *x, int limit, int want_runs, Result *out) noexcept nogil:
        """Edit distance of candidate ``x`` within ``limit`` (sets its d/prob/start/end, state 1 or 2);
        with ``want_runs`` also its runs in read order into ``out``. -1 on memory failure."""
        cdef const IdxView *ix = &self.index.view
        cdef int k = ix.seed_len, L = c.L, off = x.seed_off, dir = x.dir
        cdef int64_t p = x.seed_pos
        cdef int mf = L - off - k, mb = off, ef, eb, df = 0, db = 0, nf = 0, nb = 0, i, j, q, nm
        cdef int clip_l = 0, clip_r = 0, ci
        cdef int64_t cs, ce
        cdef const uint8_t *R = c.codes[dir]
        cdef const uint8_t *Q = c.quals[dir]
        cdef double prob
        cdef int64_t matches
        if limit > MAXK:
            limit = MAXK
        # read bases hanging over the contig's ends are clipped, not aligned against the padding
        ci = _contig_of(ix, p)
        cs = ix.contig_start[ci]
        ce = ix.contig_end[ci]
        if p - mb < cs:
            clip_l = mb - <int>(p - cs if p > cs else 0)
            mb -= clip_l
        if p + k + mf > ce:
            clip_r = mf - <int>(ce - p - k if ce > p + k else 0)
            mf -= clip_r
        # the text each half may read must lie inside the genome array
        if p - mb - limit - 1 < 0 or <uint64_t>(p + k + mf + limit + 1) > ix.genome_len:
            x.state = 2
            return 0
        ef = _lv(self.lv, R + off + k, mf, ix.genome + p + k, mf + limit + 1, 1, limit, &df)
        if ef < 0:
            x.state = 2
            return 0
        if mf > 0:
            nf = _lv_runs(self.lv, ef, df, mf, self.runs_a)
        eb = _lv(self.lv, R + off - 1, mb, ix.genome + p - 1, mb + limit - ef + 1, -1, limit - ef, &db)
        if eb < 0:
            x.state = 2
            return 0
        if mb > 0:
            nb = _lv_runs(self.lv, eb, db, mb, self.runs_b)
        x.state = 1
        x.d = ef + eb
        x.start = p - (mb + db)
        x.end = p + k + mf + df
        # probability: substitutions by quality, gaps, matches
        prob = 1.0
        matches = k
        for i in range(nf):
            if self.runs_a[i].op == OP_M:
                matches += self.runs_a[i].len
            elif self.runs_a[i].op == OP_X:
                for j in range(self.runs_a[i].len):
                    q = Q[off + k + self.runs_a[i].ppos + j]
                    prob *= SUB_PROB[q if q < 128 else 127]
            else:
                prob *= GAP_OPEN_PROB * pow(GAP_EXTEND_PROB, self.runs_a[i].len - 1)
        for i in range(nb):
            if self.runs_b[i].op == OP_M:
                matches += self.runs_b[i].len
            elif self.runs_b[i].op == OP_X:
                for j in range(self.runs_b[i].len):
                    q = Q[off - 1 - (self.runs_b[i].ppos + j)]
                    prob *= SUB_PROB[q if q < 128 else 127]
            else:
                prob *= GAP_OPEN_PROB * pow(GAP_EXTEND_PROB, self.runs_b[i].len - 1)
        x.prob = prob * pow(MATCH_PROB, <double>matches)
        if want_runs:
            if self._grow_runs(nf + nb + 8) < 0:
                return -1
            # backward half reversed (read order), the seed, the forward half
            j = 0
            if clip_l:
                out.runs[0].op = OP_S
                out.runs[0].len = clip_l
                out.runs[0].ppos = 0
                j = 1
            for i in range(nb - 1, -1, -1):
                out.runs[j] = self.runs_b[i]
                out.runs[j].ppos = off - self.runs_b[i].ppos - self.runs_b[i].len
                j += 1
            if j > 0 and out.runs[j - 1].op == OP_M:
                out.runs[j - 1].len += k
            else:
                out.runs[j].op = OP_M
                out.runs[j].len = k
                out.runs[j].ppos = off
                j += 1
            for i in range(nf):
                if i == 0 and self.runs_a[0].op == OP_M:
                    out.runs[j - 1].len += self.runs_a[0].len
                    continue
                out.runs[j] = self.runs_a[i]
                out.runs[j].ppos = off + k + self.runs_a[i].ppos
                j += 1
            if clip_r:
                out.runs[j].op = OP_S
                out.runs[j].len = clip_r
                out.runs[j].ppos = L - clip_r
                j += 1
            out.n_runs = j
        return 0

    cdef int _merged(self, ReadCtx *c, Cand *x) noexcept nogil:
        """Whether ``x`` lies within MERGE_DIST of a perfect (0-edit) location already scored in its
        direction: it cannot do better there (a tandem repeat's shifted seed hits)."""
        cdef int32_t i
        cdef Cand *y
        for i in range(c.n_scored):
            y = &c.cands[c.scored[i]]
            if (y.dir == x.dir and y.state == 1 and y.d == 0 and x.loc - y.start <= MERGE_DIST
                    and y.start - x.loc <= MERGE_DIST):
                return 1
        return 0

    cdef int _weight(self, ReadCtx *c, Cand *x) noexcept nogil:
        """Seeds voting for ``x``'s 16-bp bin and its two neighbours (an indel moves a read's hits to
        nearby diagonals): an upper bound of the seeds an alignment near ``x`` can hold."""
        cdef int64_t b = ((x.loc >> BIN_SHIFT) << 1) | x.dir
        return _bin_weight(c, b) + _bin_weight(c, b - 2) + _bin_weight(c, b + 2)

    cdef int _score_pending(self, ReadCtx *c, bint bounded) noexcept nogil:
        """Score unscored candidates best-weight first while they can still beat the limit."""
        cdef int32_t i, n = 0, idx
        cdef int limit, w, lb
        cdef Cand *x
        for i in range(c.n_cands):
            x = &c.cands[i]
            if x.state == 0:
                self.sortbuf[2 * n] = x.weight
                self.sortbuf[2 * n + 1] = i
                n += 1
        if n == 0:
            return 0
        if n > 1:
            qsort(self.sortbuf, n, 2 * sizeof(int64_t), _cmp_order)
        for i in range(n):
            idx = <int32_t>self.sortbuf[2 * i + 1]
            x = &c.cands[idx]
            limit = (c.best_d if c.best_d < self.max_dist else self.max_dist) + self.extra_depth
            if bounded:
                w = self._weight(c, x)
                lb = (c.applied[x.dir] - w) // (c.wraps + 1)
                if lb > limit:
                    continue
            if self._merged(c, x):
                x.state = 3
                continue
            if self._score(c, x, limit, 0, NULL) < 0:
                return -1
            self._add_scored(c, idx)
        return 0

    cdef void _add_scored(self, ReadCtx *c, int32_t idx, bint append=True) noexcept nogil:
        """Record a scored candidate; of two results within MERGE_DIST on one strand only the better
        counts (the other is state 3), and the read's best is kept up to date."""
        cdef Cand *x = &c.cands[idx]
        cdef Cand *y
        cdef int32_t i
        if append:
            c.scored[c.n_scored] = idx
            c.n_scored += 1
        if x.state != 1:
            return
        for i in range(c.n_scored):
            if c.scored[i] == idx:
                continue
            y = &c.cands[c.scored[i]]
            if y.state == 1 and y.dir == x.dir and x.start - y.start <= MERGE_DIST and y.start - x.start <= MERGE_DIST:
                if x.d < y.d or (x.d == y.d and x.prob > y.prob):
                    y.state = 3
                    if c.best == c.scored[i]:
                        c.best = -1
                        c.best_d = NO_SCORE
                else:
                    x.state = 3
                    return
        if c.best < 0 or x.d < c.best_d or (x.d == c.best_d and x.prob > c.cands[c.best].prob):
            c.best_d = x.d
            c.best = idx

    cdef int _apply_seed(self, ReadCtx *c, int off, int seed_id) noexcept nogil:
        """Look up the seed at read offset ``off``; 0 done, 1 the seed holds an N, -1 out of room."""
        cdef const IdxView *ix = &self.index.view
        cdef int k = ix.seed_len, L = c.L, i, dir, rc_off = L - k - off
        cdef uint64_t s = 0, r = 0, cn
        cdef uint32_t v, nf, nr, j
        cdef const uint8_t *R = c.codes[0]
        cdef const uint32_t *lst[2]
        cdef uint32_t cnt[2]
        cdef int n_dir[2]
        cdef uint32_t single
        cdef bint same
        for i in range(k):
            if R[off + i] > 3:
                return 1
            s = (s << 2) | R[off + i]
            r |= <uint64_t>(3 - R[off + i]) << (2 * i)
        cn = s if s <= r else r
        v = _lookup(ix, cn)
        if v == EMPTY:
            c.applied[0] += 1
            c.applied[1] += 1
            return 0
        if v < ix.genome_len:
            same = 1
            for i in range(k):
                if ix.genome[v + i] != R[off + i]:
                    same = 0
                    break
            if same or s == r:
                if _add_hit(c, 0, <int64_t>v - off, v, off, seed_id) < 0:
                    return -1
            if not same or s == r:
                if _add_hit(c, 1, <int64_t>v - rc_off, v, rc_off, seed_id) < 0:
                    return -1
            c.applied[0] += 1
            c.applied[1] += 1
            return 0
        v -= <uint32_t>ix.genome_len
        nf = ix.overflow[v]
        nr = ix.overflow[v + 1]
        # lst[0]: where the genome holds the read's seed (forward hits); lst[1]: its reverse complement
        if s == r:
            lst[0] = ix.overflow + v + 2
            lst[1] = lst[0]
            cnt[0] = nf
            cnt[1] = nf
        elif s == cn:
            lst[0] = ix.overflow + v + 2
            cnt[0] = nf
            lst[1] = ix.overflow + v + 2 + nf
            cnt[1] = nr
        else:
            lst[1] = ix.overflow + v + 2
            cnt[1] = nf
            lst[0] = ix.overflow + v + 2 + nf
            cnt[0] = nr
        for dir in range(2):
            if cnt[dir] > <uint32_t>self.max_hits:
                c.popular += 1
                continue
            for j in range(cnt[dir]):
                if dir == 0:
                    if _add_hit(c, 0, <int64_t>lst[0][j] - off, lst[0][j], off, seed_id) < 0:
                        return -1
                else:
                    if _add_hit(c, 1, <int64_t>lst[1][j] - rc_off, lst[1][j], rc_off, seed_id) < 0:
                        return -1
            c.applied[dir] += 1
        return 0

    cdef inline bint _settled(self, ReadCtx *c) noexcept nogil:
        """The single-end search's short-read stop, checked before a third pass: the best location has
        at most one edit and two or more seeds on its diagonal, at least four seeds were looked up
        and none was popular. Two passes of disjoint seeds were then applied, so every location with
        at most one edit was hit (an edit spoils at most one seed of a pass): the best cannot change,
        and only locations with two or more edits (which weigh little in the MAPQ) can be unseen."""
        return (c.best >= 0 and c.best_d <= 1 and c.popular == 0 and c.n_seeds_used >= 4
                and c.cands[c.best].weight >= 2)

    cdef int _search(self, ReadCtx *c, int max_seeds, int early_stop) noexcept nogil:
        """Seed and score one loaded read (the single-end search, module docstring). ``early_stop``: 0
        never, 1 SNAP's stop (no unseen location can beat the limit), 2 also :meth:`_settled`."""
        cdef int k = self.index.view.seed_len, L = c.L, pass_, off, seed_id = 0, rc, limit
        for pass_ in range(self.n_shifts):
            off = self.shifts[pass_]
            if off + k > L:
                continue
            if early_stop == 2 and pass_ >= 2 and self._settled(c):
                return 0
            if pass_ > 0:
                c.wraps += 1
            if pass_ > 0 or not c.prefetched:
                _prefetch_pass(&self.index.view, c.codes[0], L, off)
                if pass_ == 0 and 2 * k >= L and self.n_shifts > 2:
                    # a short read (one or two seeds a pass) needs several passes: ask for two more
                    _prefetch_pass(&self.index.view, c.codes[0], L, self.shifts[1])
                    _prefetch_pass(&self.index.view, c.codes[0], L, self.shifts[2])
            while off + k <= L:
                if c.applied[0] + c.applied[1] >= max_seeds or seed_id >= 2 * max_seeds:
                    return self._score_pending(c, 1)
                rc = self._apply_seed(c, off, seed_id)
                if rc < 0:
                    return -1
                seed_id += 1
                off += k
                if rc == 1:
                    continue
                c.n_seeds_used += 1
                if self._score_pending(c, 1) < 0:
                    return -1
                if early_stop:
                    limit = (c.best_d if c.best_d < self.max_dist else self.max_dist) + self.extra_depth
                    if (c.applied[0] // (c.wraps + 1) > limit and c.applied[1] // (c.wraps + 1) > limit):
                        return 0
        return self._score_pending(c, 1)

    cdef int _mapq(self, ReadCtx *c, double p_best, double p_all) noexcept nogil:
        cdef int q
        cdef double pc
        if p_all <= 0.0 or p_best >= p_all:
            q = 70
        else:
            pc = p_best / p_all
            if pc >= 1.0:
                q = 70
            else:
                q = <int>(-10.0 * log10(1.0 - pc))
                if q > 70:
                    q = 70
        if c.popular > 10:
            q -= (c.popular - 10) // 2
        return q if q > 0 else 0

    cdef int _single_mapq(self, ReadCtx *c) noexcept nogil:
        cdef double total = 0.0
        cdef int32_t i
        cdef Cand *x
        for i in range(c.n_scored):
            x = &c.cands[c.scored[i]]
            if x.state == 1:
                total += x.prob
        return self._mapq(c, c.cands[c.best].prob, total)

    cdef int _finish(self, ReadCtx *c, Cand *x, int mapq, Result *r) noexcept nogil:
        """The final record of candidate ``x``: runs with contig-edge soft clips, NM and AS."""
        cdef const IdxView *ix = &self.index.view
        cdef int i, j, n, clip, take, rl
        cdef int64_t pos, cs, ce, end
        cdef int ci
        r.mapped = 0
        if self._score(c, x, x.d, 1, r) < 0:
            return -1
        if x.state != 1:
            return 0
        n = r.n_runs
        ci = _contig_of(ix, x.seed_pos)
        cs = ix.contig_start[ci]
        ce = ix.contig_end[ci]
        pos = x.start
        # leading clip: reference bases before the contig start, leading insertions
        clip = 0
        i = 0
        while i < n:
            if r.runs[i].op == OP_I or r.runs[i].op == OP_S:
                clip += r.runs[i].len
                r.runs[i].len = 0
                i += 1
                continue
            if pos >= cs and r.runs[i].op != OP_D:
                break
            if r.runs[i].op == OP_D:
                pos += r.runs[i].len
                r.runs[i].len = 0
                i += 1
                continue
            take = <int>(cs - pos) if cs - pos < r.runs[i].len else r.runs[i].len
            clip += take
            pos += take
            r.runs[i].len -= take
            r.runs[i].ppos += take
            if r.runs[i].len == 0:
                i += 1
        # trailing clip: reference bases past the contig end, trailing insertions
        end = x.end
        rl = 0
        j = n - 1
        while j >= i:
            if r.runs[j].op == OP_I or r.runs[j].op == OP_S:
                rl += r.runs[j].len
                r.runs[j].len = 0
                j -= 1
                continue
            if end <= ce and r.runs[j].op != OP_D:
                break
            if r.runs[j].op == OP_D:
                end -= r.runs[j].len
                r.runs[j].len = 0
                j -= 1
                continue
            take = <int>(end - ce) if end - ce < r.runs[j].len else r.runs[j].len
            rl += take
            end -= take
            r.runs[j].len -= take
            if r.runs[j].len == 0:
                j -= 1
        if end <= pos:
            return 0   # nothing left inside the contig
        # compact: S, the kept runs, S
        if self._grow_runs(n + 2) < 0:
            return -1
        memcpy(self.runs_a, r.runs, n * sizeof(Run))
        j = 0
        if clip:
            r.runs[0].op = OP_S
            r.runs[0].len = clip
            r.runs[0].ppos = 0
            j = 1
        for i in range(n):
            if self.runs_a[i].len > 0:
                r.runs[j] = self.runs_a[i]
                j += 1
        if rl:
            r.runs[j].op = OP_S
            r.runs[j].len = rl
            r.runs[j].ppos = c.L - rl
            j += 1
        r.n_runs = j
        r.mapped = 1
        r.ref = ci
        r.pos = pos - cs
        r.end = end - cs
        r.rev = x.dir
        r.mapq = mapq
        # NM and AS from the kept runs (N in read or reference counts as a mismatch)
        r.nm = 0
        r.score = 0
        pos = x.start
        for i in range(r.n_runs):
            if r.runs[i].op == OP_M or r.runs[i].op == OP_X:
                for j in range(r.runs[i].len):
                    if c.codes[x.dir][r.runs[i].ppos + j] != ix.genome[cs + r.pos + self._ref_off(r, i) + j] or c.codes[x.dir][r.runs[i].ppos + j] > 3:
                        r.nm += 1
                        r.score -= 4
                    else:
                        r.score += 1
            elif r.runs[i].op == OP_I or r.runs[i].op == OP_D:
                r.nm += r.runs[i].len
                r.score -= 6 + r.runs[i].len
        return 0

    cdef inline int64_t _ref_off(self, Result *r, int upto) noexcept nogil:
        """Reference bases consumed by runs before ``upto``."""
        cdef int i
        cdef int64_t t = 0
        for i in range(upto):
            if r.runs[i].op == OP_M or r.runs[i].op == OP_X or r.runs[i].op == OP_D:
                t += r.runs[i].len
        return t

    cdef int _put_md(self, Buf *b, ReadCtx *c, Result *r) noexcept nogil:
        """``MD:Z`` of a mapped result (always starting and ending with a number, as the SAM spec's grammar)."""
        cdef const IdxView *ix = &self.index.view
        cdef int i, j
        cdef uint32_t run = 0
        cdef int64_t t = ix.contig_start[r.ref] + r.pos
        cdef uint8_t qc, tc
        cdef const uint8_t *R = c.codes[r.rev]
        if _reserve(b, 4 * <size_t>(r.end - r.pos) + 12 * <size_t>r.n_runs + 24) < 0:
            return -1
        _tag(b, b"MD", 90)
        for i in range(r.n_runs):
            if r.runs[i].op == OP_M or r.runs[i].op == OP_X:
                for j in range(r.runs[i].len):
                    qc = R[r.runs[i].ppos + j]
                    tc = ix.genome[t]
                    if qc != tc or qc > 3:
                        _md_mismatch(b, run, <uint8_t>BASES[tc if tc < 4 else 4])
                        run = 0
                    else:
                        run += 1
                    t += 1
            elif r.runs[i].op == OP_D:
                _md_deletion(b, run)
                for j in range(r.runs[i].len):
                    tc = ix.genome[t]
                    _put_char(b, <uint8_t>BASES[tc if tc < 4 else 4])
                    t += 1
                run = 0
        _md_end(b, run)
        return 0

    cdef int _single(self, ReadCtx *c, const uint8_t *bases, const uint8_t *quals, int32_t L,
                     Result *r) noexcept nogil:
        """Align one single-end read into ``r`` (r.mapped 0: unmapped)."""
        cdef int n_n
        r.mapped = 0
        self.chosen[c - &self.ctx[0]] = -1
        _reset_ctx(c)
        if L < self.index.view.seed_len:
            return 0
        n_n = self._load_read(c, bases, quals, L)
        if n_n < 0:
            return -1
        if n_n > self.max_dist:
            return 0
        if self._search(c, self.max_seeds, 2) < 0:
            return -1
        if c.best < 0 or c.best_d > self.max_dist:
            return 0
        self.chosen[c - &self.ctx[0]] = c.best
        return self._finish(c, &c.cands[c.best], self._single_mapq(c), r)

    # -- pairs ---------------------------------------------------------------------------------------

    cdef inline bint _proper(self, Cand *a, int la, Cand *b, int lb) noexcept nogil:
        """Opposite strands, the forward one leftmost, template span within the spacing."""
        cdef Cand *f
        cdef Cand *v
        cdef int64_t span
        if a.dir == b.dir:
            return 0
        if a.dir == 0:
            f = a
            v = b
        else:
            f = b
            v = a
        if f.start > v.start or f.end > v.end:
            return 0
        span = v.end - f.start
        return self.min_spacing <= span <= self.max_spacing

    cdef int _rescue(self, ReadCtx *a, ReadCtx *b) noexcept nogil:
        """Score ``b``'s seeded candidates lying in the pair window of ``a``'s scored locations."""
        cdef int32_t i, j, n_a = a.n_scored
        cdef int64_t lo, hi
        cdef Cand *x
        cdef Cand *y
        cdef int limit = self.max_dist, was
        for i in range(n_a):
            x = &a.cands[a.scored[i]]
            if x.state != 1 or x.d > self.max_dist:
                continue
            if x.dir == 0:   # mate reverse, to the right: its start in [start + min - Lb, start + max - Lb]
                lo = x.start + self.min_spacing - b.L - MERGE_DIST
                hi = x.start + self.max_spacing - b.L + MERGE_DIST
            else:            # mate forward, to the left
                lo = x.end - self.max_spacing - MERGE_DIST
                hi = x.end - self.min_spacing + MERGE_DIST
            for j in range(b.n_cands):
                y = &b.cands[j]
                if y.dir == x.dir or y.loc < lo or y.loc > hi or y.state == 1 or y.state == 3:
                    continue
                was = y.state   # 0: never scored; 2: beyond the single-end limit, worth a wider look
                if self._merged(b, y):
                    y.state = 3
                    continue
                if self._score(b, y, limit, 0, NULL) < 0:
                    return -1
                self._add_scored(b, j, was == 0)   # a re-scored one is listed already
        return 0

    cdef int _best_pair(self, ReadCtx *a, ReadCtx *b, int32_t *ia, int32_t *ib, double *p_best,
                        double *p_all) noexcept nogil:
        """The best proper pair of scored locations (fewest edits, then highest probability); 0 if none."""
        cdef int32_t i, j
        cdef Cand *x
        cdef Cand *y
        cdef int best_d = NO_SCORE, d
        cdef double p, best_p = 0.0, total = 0.0
        cdef int found = 0
        for i in range(a.n_scored):
            x = &a.cands[a.scored[i]]
            if x.state != 1 or x.d > self.max_dist:
                continue
            for j in range(b.n_scored):
                y = &b.cands[b.scored[j]]
                if y.state != 1 or y.d > self.max_dist or not self._proper(x, a.L, y, b.L):
                    continue
                d = x.d + y.d
                p = x.prob * y.prob
                total += p
                if d < best_d or (d == best_d and p > best_p):
                    best_d = d
                    best_p = p
                    ia[0] = a.scored[i]
                    ib[0] = b.scored[j]
                    found = 1
        p_best[0] = best_p
        p_all[0] = total
        return found

    cdef int _pair(self, const uint8_t *b0, const uint8_t *q0, int32_t l0, const uint8_t *b1,
                   const uint8_t *q1, int32_t l1, int *proper) noexcept nogil:
        """Align one pair into res[0], res[1]; sets ``proper``."""
        cdef ReadCtx *c0 = &self.ctx[0]
        cdef ReadCtx *c1 = &self.ctx[1]
        cdef int32_t i0 = -1, i1 = -1
        cdef double pb = 0.0, pa = 0.0
        cdef int n0, n1, q, s
        cdef ReadCtx *cs[2]
        cdef ReadCtx *c
        proper[0] = 0
        self.res[0].mapped = 0
        self.res[1].mapped = 0
        self.chosen[0] = -1
        self.chosen[1] = -1
        _reset_ctx(c0)
        _reset_ctx(c1)
        cs[0] = c0
        cs[1] = c1
        if l0 >= self.min_read_len and l1 >= self.min_read_len:
            n0 = self._load_read(c0, b0, q0, l0)
            n1 = self._load_read(c1, b1, q1, l1)
            if n0 < 0 or n1 < 0:
                return -1
            if n0 <= self.max_dist and n1 <= self.max_dist:
                _prefetch_pass(&self.index.view, c0.codes[0], l0, 0)
                _prefetch_pass(&self.index.view, c1.codes[0], l1, 0)
                if 2 * self.index.view.seed_len >= l0 and self.n_shifts > 1:
                    _prefetch_pass(&self.index.view, c0.codes[0], l0, self.shifts[1])
                if 2 * self.index.view.seed_len >= l1 and self.n_shifts > 1:
                    _prefetch_pass(&self.index.view, c1.codes[0], l1, self.shifts[1])
                c0.prefetched = 1
                c1.prefetched = 1
                if self._search(c0, self.max_seeds, 1) < 0 or self._search(c1, self.max_seeds, 1) < 0:
                    return -1
                if not self._best_pair(c0, c1, &i0, &i1, &pb, &pa):
                    if self._rescue(c0, c1) < 0 or self._rescue(c1, c0) < 0:
                        return -1
                    self._best_pair(c0, c1, &i0, &i1, &pb, &pa)
                if i0 >= 0:
                    q = self._mapq(c0 if c0.popular >= c1.popular else c1, pb, pa)
                    if (self._finish(c0, &c0.cands[i0], q, &self.res[0]) < 0
                            or self._finish(c1, &c1.cands[i1], q, &self.res[1]) < 0):
                        return -1
                    if self.res[0].mapped and self.res[1].mapped and self.res[0].ref == self.res[1].ref:
                        proper[0] = 1
                        self.chosen[0] = i0
                        self.chosen[1] = i1
                        return 0
                    self.res[0].mapped = 0
                    self.res[1].mapped = 0
                # no proper pair: each mate on its own, MAPQ / 3
                for s in range(2):
                    c = cs[s]
                    if c.best >= 0 and c.best_d <= self.max_dist:
                        self.chosen[s] = c.best
                        if self._finish(c, &c.cands[c.best], self._single_mapq(c) // 3, &self.res[s]) < 0:
                            return -1
                return 0
        # a mate too short for the pair search: single-end, MAPQ / 3
        if self._single(c0, b0, q0, l0, &self.res[0]) < 0 or self._single(c1, b1, q1, l1, &self.res[1]) < 0:
            return -1
        self.res[0].mapq //= 3
        self.res[1].mapq //= 3
        return 0

    # -- secondary alignments -------------------------------------------------------------------------

    cdef int _secondaries(self, ReadCtx *c, int32_t chosen, Result *primary) noexcept nogil:
        """Fill ``self.sres`` with the read's other scored locations within ``secondary_delta`` edits of
        the chosen one (and within max_dist): fewest edits first, then highest probability, then
        leftmost; at most ``max_secondary``. Returns how many (-1 on memory failure)."""
        cdef int32_t i, j, n = 0, idx, tmp
        cdef int found = 0, lim
        cdef Cand *x
        cdef Cand *y
        if self.max_secondary <= 0 or chosen < 0 or not primary.mapped:
            return 0
        lim = c.cands[chosen].d + self.secondary_delta
        if lim > self.max_dist:
            lim = self.max_dist
        for i in range(c.n_scored):
            idx = c.scored[i]
            x = &c.cands[idx]
            if idx == chosen or x.state != 1 or x.d > lim:
                continue
            # insertion into the ordered list (few entries: a read has a handful of scored locations)
            self.sec_idx[n] = idx
            j = n
            n += 1
            while j > 0:
                y = &c.cands[self.sec_idx[j - 1]]
                if (y.d < x.d or (y.d == x.d and (y.prob > x.prob or (y.prob == x.prob and
                        (y.start < x.start or (y.start == x.start and y.dir <= x.dir)))))):
                    break
                tmp = self.sec_idx[j - 1]
                self.sec_idx[j - 1] = self.sec_idx[j]
                self.sec_idx[j] = tmp
                j -= 1
        for i in range(n):
            if found >= self.max_secondary:
                break
            if self._finish(c, &c.cands[self.sec_idx[i]], 0, &self.sres[found]) < 0:
                return -1
            if self.sres[found].mapped:
                found += 1
        return found

    cdef int _emit_secondaries(self, AlnRec **srows, uint8_t **spres, Buf *scig, Buf *stags, Py_ssize_t row,
                               ReadCtx *c, int s, int paired) noexcept nogil:
        """The secondary records of read ``row`` (mate ``s`` of the current pair when ``paired``)."""
        cdef int k, n = self._secondaries(c, self.chosen[s], &self.res[s])
        if n < 0:
            return -1
        for k in range(n):
            if self._emit(&srows[k][row], &scig[k], &stags[k], c, &self.sres[k], &self.res[1 - s], paired, s,
                          0, 1) < 0:
                return -1
            spres[k][row] = 1
        return 0

    # -- records ---------------------------------------------------------------------------------------

    cdef int _emit(self, AlnRec *o, Buf *cig, Buf *tags, ReadCtx *c, Result *r, Result *mate, int paired, int seg,
                   int proper, int secondary=0) noexcept nogil:
        """One record's fields, CIGAR (into ``cig``) and tags; a ``secondary`` record gets flag 0x100 and no
        MC/MQ (its mate fields name the mate's primary record, as minimap2's secondaries)."""
        cdef uint32_t flag = 1 if paired else 0
        if secondary:
            flag |= 0x100
        cdef int64_t p5, n5, tlen = 0
        if paired:
            flag |= 0x40 if seg == 0 else 0x80
            if mate.mapped:
                if mate.rev:
                    flag |= 0x20
            else:
                flag |= 0x8
            if proper:
                flag |= 0x2
        o.next_ref_index = -1
        o.next_position = -1
        if r.mapped:
            if r.rev:
                flag |= 0x10
            o.mapq = r.mapq
            o.ref_index = r.ref
            o.position = r.pos
            if _put_cigar(cig, r) < 0:
                return -1
        else:
            flag |= 0x4
            o.mapq = 0
            o.ref_index = -1
            o.position = -1
            if paired and mate.mapped:   # placed at its mapped mate
                o.ref_index = mate.ref
                o.position = mate.pos
        if paired:
            if mate.mapped:
                o.next_ref_index = mate.ref
                o.next_position = mate.pos
                if r.mapped and r.ref == mate.ref:
                    p5 = r.end - 1 if r.rev else r.pos
                    n5 = mate.end - 1 if mate.rev else mate.pos
                    tlen = n5 - p5
                    if tlen > 0:
                        tlen += 1
                    elif tlen < 0:
                        tlen -= 1
            elif r.mapped:
                o.next_ref_index = r.ref
                o.next_position = r.pos
        o.template_length = tlen
        o.flag = flag
        if r.mapped:
            if (_aux_int(tags, b"NM", r.nm) < 0 or self._put_md(tags, c, r) < 0
                    or _aux_int(tags, b"AS", r.score) < 0):
                return -1
        if paired and mate.mapped and not secondary:
            if _reserve(tags, 4) < 0:
                return -1
            _tag(tags, b"MC", 90)
            if _put_cigar(tags, mate) < 0 or _reserve(tags, 1) < 0:
                return -1
            _put_char(tags, 0)
            if _aux_int(tags, b"MQ", mate.mapq) < 0:
                return -1
        return 0

    def align(self, const uint64_t[::1] offsets, const uint8_t[::1] data, qual_offsets=None, qual_data=None,
              bint paired=False):
        """Align every read of a block; returns ``(fields, cigar_offsets, cigar_data, tag_offsets, tag_data,
        secondary)``, ``secondary`` a list of ``max_secondary`` columns ``(fields, cigar_offsets, cigar_data,
        present, tag_offsets, tag_data)`` (absent rows: zero-length records, ``present`` False).

        ``offsets``/``data``: a RaggedArray of text bases (interleaved pairs when ``paired``);
        ``qual_offsets``/``qual_data``: Phred+33 qualities of the same lengths, or None (Q30 assumed).
        ``fields`` has the ALIGNMENT_DTYPE layout, one row per read. Runs without the GIL.
        """
        cdef Py_ssize_t n = offsets.shape[0] - 1, i
        cdef const uint64_t[::1] qo
        cdef const uint8_t[::1] qd
        cdef const uint64_t *qop = NULL
        cdef const uint8_t *qdp = NULL
        if n < 0:
            raise ValueError("offsets must hold at least one entry")
        if paired and n % 2:
            raise ValueError(f"paired block has an odd number of reads ({n})")
        if n > 0 and offsets[n] > <uint64_t>data.shape[0]:
            raise ValueError(f"offsets end at {offsets[n]} but data holds {data.shape[0]} bytes")
        for i in range(n):
            if offsets[i + 1] < offsets[i] or offsets[i + 1] - offsets[i] > 0x7fffffff:
                raise ValueError(f"bad offsets at record {i}")
        if (qual_offsets is None) != (qual_data is None):
            raise ValueError("give both qual_offsets and qual_data, or neither")
        if qual_offsets is not None:
            qo = qual_offsets
            qd = qual_data
            if qo.shape[0] != n + 1:
                raise ValueError(f"{n} reads but {qo.shape[0] - 1} quality records")
            if n > 0 and qo[n] > <uint64_t>qd.shape[0]:
                raise ValueError("quality offsets run past the quality data")
            for i in range(n):
                if qo[i + 1] - qo[i] != offsets[i + 1] - offsets[i]:
                    raise ValueError(f"record {i}: {offsets[i + 1] - offsets[i]} bases but "
                                     f"{qo[i + 1] - qo[i]} qualities")
            qop = &qo[0]
            qdp = &qd[0] if qd.shape[0] > 0 else NULL
        if self.busy:
            raise RuntimeError("a Mapper is used by one thread at a time; make one Mapper per thread")
        self.busy = True
        try:
            return self._align(offsets, data, qop, qdp, n, paired)
        finally:
            self.busy = False

    cdef object _align(self, const uint64_t[::1] offsets, const uint8_t[::1] data, const uint64_t *qop,
                       const uint8_t *qdp, Py_ssize_t n, bint paired):
        fields = np.zeros(n, dtype=_DTYPE)
        cig_off = np.zeros(n + 1, dtype=np.uint64)
        tag_off = np.zeros(n + 1, dtype=np.uint64)
        cdef AlnRec *rows = <AlnRec*>_ptr(fields) if n else NULL
        cdef uint64_t[::1] co = cig_off
        cdef uint64_t[::1] to = tag_off
        cdef const uint8_t *dp = &data[0] if data.shape[0] > 0 else <const uint8_t*>b""
        self.cig.len = 0
        self.tags.len = 0
        # secondary columns: max_secondary of them, absent rows (zero-length records) where a read has fewer
        cdef int n_sec = self.max_secondary, k
        sec_cols = []
        for k in range(n_sec):
            sf = np.empty(n, dtype=_DTYPE)
            sf[:] = (4, 0, -1, -1, -1, -1, 0)   # persona.agd.records.ABSENT_ROW
            sec_cols.append([sf, np.zeros(n + 1, np.uint64), None, np.zeros(n, np.uint8),
                             np.zeros(n + 1, np.uint64), None])
        cdef AlnRec **srows = <AlnRec**>calloc(n_sec + 1, sizeof(AlnRec*))
        cdef uint8_t **spres = <uint8_t**>calloc(n_sec + 1, sizeof(uint8_t*))
        cdef uint64_t **sco = <uint64_t**>calloc(n_sec + 1, sizeof(uint64_t*))
        cdef uint64_t **sto = <uint64_t**>calloc(n_sec + 1, sizeof(uint64_t*))
        cdef Buf *scig = <Buf*>calloc(n_sec + 1, sizeof(Buf))
        cdef Buf *stags = <Buf*>calloc(n_sec + 1, sizeof(Buf))
        if srows == NULL or spres == NULL or sco == NULL or sto == NULL or scig == NULL or stags == NULL:
            free(srows); free(spres); free(sco); free(sto); free(scig); free(stags)
            raise MemoryError()
        if n > 0:
            for k in range(n_sec):
                srows[k] = <AlnRec*>_ptr(sec_cols[k][0])
                sco[k] = <uint64_t*>_ptr(sec_cols[k][1])
                spres[k] = <uint8_t*>_ptr(sec_cols[k][3])
                sto[k] = <uint64_t*>_ptr(sec_cols[k][4])
        try:
            self._align_loop(offsets, dp, qop, qdp, n, paired, rows, co, to, srows, spres, sco, sto, scig, stags)
            for k in range(n_sec):
                sec_cols[k][2] = _take(&scig[k])
                sec_cols[k][3] = sec_cols[k][3].view(np.bool_)
                sec_cols[k][5] = _take(&stags[k])
        finally:
            for k in range(n_sec):
                free(scig[k].data)
                free(stags[k].data)
            free(srows); free(spres); free(sco); free(sto); free(scig); free(stags)
        return (fields, cig_off, _take(&self.cig), tag_off, _take(&self.tags),
                [tuple(col) for col in sec_cols])

    cdef int _align_loop(self, const uint64_t[::1] offsets, const uint8_t *dp, const uint64_t *qop,
                         const uint8_t *qdp, Py_ssize_t n, bint paired, AlnRec *rows, uint64_t[::1] co,
                         uint64_t[::1] to, AlnRec **srows, uint8_t **spres, uint64_t **sco, uint64_t **sto,
                         Buf *scig, Buf *stags) except -1:
        cdef const IdxView *ix = &self.index.view
        cdef Py_ssize_t ahead, i
        cdef int32_t la
        cdef const uint8_t *bs[2]
        cdef const uint8_t *qs[2]
        cdef int32_t ls[2]
        cdef int s, failed = 0, proper, k, n_sec = self.max_secondary
        with nogil:
            i = 0
            while i < n and not failed:
                # the next read's (pair's) first seeds are asked for while this one is aligned
                ahead = i + (2 if paired else 1)
                while ahead < n and ahead < i + (4 if paired else 2):
                    la = <int32_t>(offsets[ahead + 1] - offsets[ahead])
                    _prefetch_pass(ix, dp + offsets[ahead], la, 0, True)
                    if 2 * ix.seed_len >= la and self.n_shifts > 1:
                        _prefetch_pass(ix, dp + offsets[ahead], la, self.shifts[1], True)
                    ahead += 1
                if paired:
                    for s in range(2):
                        ls[s] = <int32_t>(offsets[i + s + 1] - offsets[i + s])
                        bs[s] = dp + offsets[i + s]
                        qs[s] = qdp + qop[i + s] if qdp != NULL else NULL
                    if self._pair(bs[0], qs[0], ls[0], bs[1], qs[1], ls[1], &proper) < 0:
                        failed = 1
                        break
                    for s in range(2):
                        if self._emit(&rows[i + s], &self.cig, &self.tags, &self.ctx[s], &self.res[s],
                                      &self.res[1 - s], 1, s, proper) < 0:
                            failed = 1
                        co[i + s + 1] = self.cig.len
                        to[i + s + 1] = self.tags.len
                        if n_sec and self._emit_secondaries(srows, spres, scig, stags, i + s, &self.ctx[s], s,
                                                            1) < 0:
                            failed = 1
                        for k in range(n_sec):
                            sco[k][i + s + 1] = scig[k].len
                            sto[k][i + s + 1] = stags[k].len
                    i += 2
                else:
                    ls[0] = <int32_t>(offsets[i + 1] - offsets[i])
                    if self._single(&self.ctx[0], dp + offsets[i], qdp + qop[i] if qdp != NULL else NULL,
                                    ls[0], &self.res[0]) < 0:
                        failed = 1
                        break
                    if self._emit(&rows[i], &self.cig, &self.tags, &self.ctx[0], &self.res[0], &self.res[1], 0,
                                  0, 0) < 0:
                        failed = 1
                    co[i + 1] = self.cig.len
                    to[i + 1] = self.tags.len
                    if n_sec and self._emit_secondaries(srows, spres, scig, stags, i, &self.ctx[0], 0, 0) < 0:
                        failed = 1
                    for k in range(n_sec):
                        sco[k][i + 1] = scig[k].len
                        sto[k][i + 1] = stags[k].len
                    i += 1
        if failed:
            raise MemoryError("out of memory while aligning")
        return 0


cdef void *_ptr(object arr) except NULL:
    cdef uint8_t[::1] v = arr.view(np.uint8).reshape(-1)
    return <void*>&v[0]


cdef object _take(Buf *b):
    out = np.empty(b.len, dtype=np.uint8)
    cdef uint8_t[::1] v = out
    if b.len:
        memcpy(&v[0], b.data, b.len)
    return out
