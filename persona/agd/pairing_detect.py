"""Is a dataset paired? For datasets whose manifest does not say (the original Persona's).

The original writes paired reads interleaved (record 2i = read 1, 2i+1 = read 2,
``fastq_interleaved_chunker_op.cc``), every chunk holding an even number of
records, but its manifests have no ``paired`` field. :func:`detect_paired`
decides from the read names: paired when every sampled pair of records 2i and
2i+1 has the same name once the mate suffixes are removed (``/1`` ``/2``, and
anything after the first whitespace, e.g. Illumina's ``1:N:0:...`` comment).
:func:`resolve_paired` combines the manifest, a user override and detection,
and says which it used.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from persona.agd.columns import METADATA

if TYPE_CHECKING:
    from persona.agd.dataset import Dataset

#: pairs of names checked at most (from the first chunks on)
SAMPLE_PAIRS = 2000


def mate_name(name: bytes) -> tuple[bytes, bytes]:
    """``(name without its mate suffix, the suffix)``: ``b"x/1 1:N:0"`` -> ``(b"x", b"/1")``."""
    n = name.split(None, 1)[0] if name.strip() else name
    if n[-2:] in (b"/1", b"/2"):
        return n[:-2], n[-2:]
    return n, b""


def names_look_paired(names: Sequence[bytes]) -> bool:
    """True when ``names`` (an even number of them) come as mates: names 2i and 2i+1 equal after
    :func:`mate_name`, and where both carry suffixes they are ``/1`` then ``/2``. False for an odd
    count or an empty list."""
    if not names or len(names) % 2:
        return False
    for i in range(0, len(names) - 1, 2):
        a, sa = mate_name(bytes(names[i]))
        b, sb = mate_name(bytes(names[i + 1]))
        if a != b or not a:
            return False
        if sa and sb and (sa, sb) != (b"/1", b"/2"):
            return False
    return True


def detect_paired(dataset: "Dataset", sample_pairs: int = SAMPLE_PAIRS) -> bool | None:
    """Whether ``dataset``'s reads are interleaved pairs, judged from its read names.

    Reads the ``metadata`` column of the first chunk(s), up to ``sample_pairs`` pairs. False when
    a chunk (or the dataset) holds an odd number of records or a sampled pair's names differ;
    None when it cannot be told: no ``metadata`` column, or no records. Errors reading the
    chunk (a damaged file) propagate: a guess from a file that cannot be read is no answer.
    The manifest's ``paired`` field is not consulted (see :func:`resolve_paired`).
    """
    if METADATA not in dataset.columns or dataset.num_records == 0:
        return None
    if any(ref.num_records % 2 for ref in dataset.chunks):
        return False
    want = 2 * max(1, sample_pairs)
    seen = 0
    for i, ref in enumerate(dataset.chunks):
        names = dataset.read_column(i, METADATA)
        take = min(len(names), want - seen)
        take -= take % 2
        if not names_look_paired([names[j] for j in range(take)]):
            return False
        seen += take
        if seen >= want:
            break
    return True


def resolve_paired(dataset: "Dataset", override: bool | None = None) -> tuple[bool, str]:
    """``(paired, why)``: ``override`` (``--paired``/``--single``) first, then the manifest's
    ``paired`` field, then :func:`detect_paired` on the read names; single-end when none tells.
    ``why`` is a short phrase for ``info`` and logs."""
    if override is not None:
        return override, "as asked (" + ("--paired" if override else "--single") + ")"
    if dataset.manifest.paired is not None:
        return dataset.manifest.paired, "from the manifest"
    detected = detect_paired(dataset)
    if detected is None:
        return False, "assumed single-end: the manifest does not say and there are no read names to tell"
    if detected:
        return True, "detected: the manifest does not say; records 2i and 2i+1 have the same read names"
    return False, "detected: the manifest does not say; read names do not come in mate pairs"
