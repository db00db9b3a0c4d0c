"""persona markdup against Picard MarkDuplicates: the same duplicate flags and metrics on a simulated
set with injected PCR duplicates (exact copies, copies with errors, equal-score ties, fragments) and
on the measles set."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURES, require_tool
from persona.agd import Dataset
from persona.apps.export_sam import export_sam
from persona.apps.importer import ImportRequest
from persona.apps.markdup import MarkdupRequest, MarkdupSummary, estimate_library_size, read_metrics
from persona.apps.sort import SortRequest
from persona.runtime import Runtime

REF = FIXTURES / "measles" / "MH356245.1.fasta"


def _read_fq(p: Path) -> list[list[str]]:
    lines = p.read_text().splitlines()
    return [lines[i:i + 4] for i in range(0, len(lines), 4)]


def _write_fq(p: Path, recs: list[list[str]]) -> None:
    p.write_text("".join("\n".join(r) + "\n" for r in recs))


def _mutate(seq: str, rng: random.Random) -> str:
    i = rng.randrange(20, len(seq) - 20)
    return seq[:i] + {"A": "C", "C": "G", "G": "T", "T": "A"}.get(seq[i], "A") + seq[i + 1:]


@pytest.fixture(scope="session")
def simulated_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wgsim, mm2 = require_tool("wgsim"), require_tool("minimap2")
    d = tmp_path_factory.mktemp("mdsim")
    r1, r2 = d / "r1.fq", d / "r2.fq"
    subprocess.run([wgsim, "-N", "2000", "-1", "120", "-2", "120", "-S", "11", "-e", "0.001", "-r", "0",
                    str(REF), str(r1), str(r2)], check=True, capture_output=True)
    rng = random.Random(5)
    a, b = _read_fq(r1), _read_fq(r2)
    qual = lambda n: "".join(chr(33 + rng.choice([2, 12, 20, 30, 37, 40])) for _ in range(n))  # noqa: E731
    for r in a + b:
        r[0] = r[0].split()[0][:-2] if r[0].endswith(("/1", "/2")) else r[0].split()[0]
        r[3] = qual(len(r[1]))
    extra_a, extra_b = [], []
    for i in range(400):
        j = rng.randrange(len(a))
        x, y = [*a[j]], [*b[j]]
        x[0] = y[0] = f"@dup{i}"
        kind = i % 4
        if kind == 1:  # copy with a sequencing error and other qualities
            x[1], y[1] = _mutate(x[1], rng), _mutate(y[1], rng)
            x[3], y[3] = qual(len(x[1])), qual(len(y[1]))
        elif kind == 2:  # exact copy: equal scores, the first in file order wins
            pass
        elif kind == 3:  # a fragment: the mate is random, unmapped
            y[1] = "".join(rng.choice("ACGT") for _ in range(len(y[1])))
        else:
            x[3] = qual(len(x[1]))
        extra_a.append(x)
        extra_b.append(y)
    _write_fq(r1, a + extra_a)
    _write_fq(r2, b + extra_b)
    sam = d / "aln.sam"
    with sam.open("w") as out:
        subprocess.run([mm2, "-ax", "sr", "--secondary=no", str(REF), str(r1), str(r2)], check=True, stdout=out,
                       stderr=subprocess.DEVNULL)
    return sam


def _compare_with_picard(sam: Path, work: Path, chunk_size: int) -> tuple[MarkdupSummary, int, int]:
    picard = require_tool("PicardCommandLine")
    require_tool("samtools")
    loc = work / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(sam),), output=str(loc), name="ds", chunk_size=chunk_size))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", group_chunks=2))
        export_sam(loc, work / "sorted.bam", name="ds_sorted", secondary=False, runtime=rt)
        s = rt.run(MarkdupRequest(dataset=str(loc), name="ds_sorted", metrics=str(work / "ours.txt")))
        export_sam(loc, work / "ours.bam", name="ds_sorted", secondary=False, runtime=rt)
    subprocess.run([picard, "MarkDuplicates", f"I={work / 'sorted.bam'}", f"O={work / 'picard.bam'}",
                    f"M={work / 'picard.txt'}"], check=True, capture_output=True)

    def flags(bam: Path) -> list[tuple[str, int]]:
        out = subprocess.run(["samtools", "view", str(bam)], capture_output=True, text=True, check=True).stdout
        return [(ln.split("\t")[0], int(ln.split("\t")[1])) for ln in out.splitlines()]

    ours, theirs = flags(work / "ours.bam"), flags(work / "picard.bam")
    assert [x[0] for x in ours] == [x[0] for x in theirs]
    differ = sum((x[1] & 0x400) != (y[1] & 0x400) for x, y in zip(ours, theirs))
    assert differ <= 0.001 * len(ours), f"{differ} of {len(ours)} records flagged differently"
    m_ours, m_theirs = read_metrics(str(work / "ours.txt")), read_metrics(str(work / "picard.txt"))
    assert m_ours == m_theirs
    assert isinstance(s, MarkdupSummary)
    return s, differ, sum(1 for x in theirs if x[1] & 0x400)


def test_simulated_equals_picard(simulated_sam: Path, tmp_path: Path) -> None:
    s, differ, picard_dups = _compare_with_picard(simulated_sam, tmp_path, 700)
    assert differ == 0
    assert s.duplicates == picard_dups > 300
    ds = Dataset.open(tmp_path / "agd", "ds_sorted")
    assert ds.manifest.provenance[-1]["app"] == "markdup"


def test_measles_equals_picard(shared_data: Path, tmp_path: Path) -> None:
    mm2 = require_tool("minimap2")
    d = shared_data / "measles_SRR7517498"
    sam = tmp_path / "m.sam"
    with sam.open("w") as out:
        subprocess.run([mm2, "-t", "2", "-ax", "sr", "--secondary=no", str(d / "MH356245.1.fasta"),
                        str(d / "SRR7517498_R1.fastq.gz"), str(d / "SRR7517498_R2.fastq.gz")], check=True,
                       stdout=out, stderr=subprocess.DEVNULL)
    s, differ, picard_dups = _compare_with_picard(sam, tmp_path, 20000)
    assert differ == 0 and s.duplicates == picard_dups > 1000


def test_rerun_is_stable_and_cli(simulated_sam: Path, tmp_path: Path) -> None:
    """A second run gives the same flags (old 0x400 flags are cleared first, as Picard does)."""
    from persona.cli import main

    loc = tmp_path / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(simulated_sam),), output=str(loc), name="ds", chunk_size=1000))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", output=str(tmp_path / "s")))
        a = rt.run(MarkdupRequest(dataset=str(tmp_path / "s")))
    assert main(["markdup", str(tmp_path / "s"), "-M", str(tmp_path / "m.txt"), "--quiet"]) == 0
    ds = Dataset.open(tmp_path / "s")
    n = sum(int(((ds.read_column(i, "results").fields["flag"] & 0x400) != 0).sum()) for i in range(len(ds.chunks)))
    assert n == a.duplicates
    assert read_metrics(str(tmp_path / "m.txt"))[0]["UNPAIRED_READ_DUPLICATES"] == \
        str(a.metrics[0]["UNPAIRED_READ_DUPLICATES"])


def test_library_size_estimate() -> None:
    # values Picard reports (measles: 27975 pairs, 848 duplicate pairs)
    assert estimate_library_size(27975, 27975 - 848) == 452066
    assert estimate_library_size(10, 10) is None


def test_secondary_columns_counted_not_flagged(simulated_sam: Path, tmp_path: Path) -> None:
    """Present secondary<N> rows count as SECONDARY_OR_SUPPLEMENTARY_RDS and keep their flags, as Picard
    leaves secondary/supplementary records of a coordinate-sorted input unflagged."""
    import numpy as np

    from persona.agd.records import Alignments

    loc = tmp_path / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(simulated_sam),), output=str(loc), name="ds", chunk_size=1000))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", name="s"))
        ds = Dataset.open(loc, "s")
        present = 0
        for i, _ in enumerate(ds.chunks):
            res = ds.read_column(i, "results")
            sec = Alignments.absent(len(res))
            rows = np.arange(0, len(res), 7)
            sec.fields[rows] = res.fields[rows]
            sec.fields["flag"][rows] |= 0x100
            sec.present[rows] = True
            sec.cigars = res.cigars
            present += len(rows)
            ds.write_column_chunk(i, "secondary0", sec)
        ds.commit_columns(["secondary0"])
        before = [Dataset.open(loc, "s").read_column(i, "secondary0") for i in range(len(ds.chunks))]
        s = rt.run(MarkdupRequest(dataset=str(loc), name="s"))
    assert s.metrics[0]["SECONDARY_OR_SUPPLEMENTARY_RDS"] == present
    after = Dataset.open(loc, "s")
    assert [after.read_column(i, "secondary0") for i in range(len(after.chunks))] == before
    assert s.duplicates > 300


def test_human_chr20_equals_picard(shared_data: Path, tmp_path: Path) -> None:
    """Real Illumina names (tile:x:y): the location tie-break and optical duplicates as Picard finds them."""
    bam = shared_data / "human_NA12878_chr20" / "NA12878_S1.chr20.10_10p1mb.bam"
    sam = tmp_path / "h.sam"
    with sam.open("w") as out:
        subprocess.run(["samtools", "view", "-h", str(bam)], check=True, stdout=out)
    s, differ, picard_dups = _compare_with_picard(sam, tmp_path, 10000)
    assert differ == 0 and s.duplicates == picard_dups > 200
    assert s.metrics[0]["READ_PAIR_OPTICAL_DUPLICATES"] > 0


def test_window_equals_whole_dataset(simulated_sam: Path, tmp_path: Path) -> None:
    """Deciding groups in a window over the sorted records (bounded memory) gives the decisions of
    deciding everything at the end; a window shorter than a clip is refused, not silently wrong."""
    from persona.errors import DatasetError

    loc = tmp_path / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(simulated_sam),), output=str(loc), name="ds", chunk_size=300))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", name="s"))
        whole = rt.run(MarkdupRequest(dataset=str(loc), name="s", window=0))
        flags_whole = [Dataset.open(loc, "s").read_column(i, "results").fields["flag"].copy()
                       for i in range(len(Dataset.open(loc, "s").chunks))]
        win = rt.run(MarkdupRequest(dataset=str(loc), name="s", window=400))
        ds = Dataset.open(loc, "s")
        flags_win = [ds.read_column(i, "results").fields["flag"] for i in range(len(ds.chunks))]
        assert not whole.windowed and win.windowed
        assert win.metrics == whole.metrics and win.duplicates == whole.duplicates
        assert all((a == b).all() for a, b in zip(flags_whole, flags_win))
        assert win.held_max < whole.held_max / 3
        try:
            rt.run(MarkdupRequest(dataset=str(loc), name="s", window=1))
        except DatasetError as e:
            assert "window" in str(e)


def test_remove_duplicates_equals_picard(simulated_sam: Path, tmp_path: Path) -> None:
    """--remove (Picard's REMOVE_DUPLICATES=true): a new dataset without the duplicates, the kept
    records' flags as Picard writes them; the input dataset is left as it was."""
    picard = require_tool("PicardCommandLine")
    require_tool("samtools")
    loc = tmp_path / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(simulated_sam),), output=str(loc), name="ds", chunk_size=700))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", group_chunks=2))
        export_sam(loc, tmp_path / "sorted.bam", name="ds_sorted", secondary=False, runtime=rt)
        gen = Dataset.open(loc, "ds_sorted").manifest.generation
        s = rt.run(MarkdupRequest(dataset=str(loc), name="ds_sorted", remove=True, metrics=str(tmp_path / "o.txt")))
        export_sam(loc, tmp_path / "ours.bam", name="ds_sorted_dedup", secondary=False, runtime=rt)
    subprocess.run([picard, "MarkDuplicates", f"I={tmp_path / 'sorted.bam'}", f"O={tmp_path / 'picard.bam'}",
                    f"M={tmp_path / 'picard.txt'}", "REMOVE_DUPLICATES=true"], check=True, capture_output=True)

    def records(bam: Path) -> list[tuple[str, ...]]:
        out = subprocess.run(["samtools", "view", str(bam)], capture_output=True, text=True, check=True).stdout
        return [tuple(ln.split("\t")[:6]) for ln in out.splitlines()]

    ours, theirs = records(tmp_path / "ours.bam"), records(tmp_path / "picard.bam")
    assert s.duplicates > 300 and len(ours) == s.kept == s.records - s.duplicates
    assert ours == theirs
    assert read_metrics(str(tmp_path / "o.txt")) == read_metrics(str(tmp_path / "picard.txt"))
    src = Dataset.open(loc, "ds_sorted")
    assert src.manifest.generation == gen  # the input is unchanged
    out = Dataset.open(loc, "ds_sorted_dedup")
    assert out.manifest.sort == "coordinate" and out.manifest.provenance[-1].get("removed") is True


def test_sort_markdup_equals_sort_then_markdup(simulated_sam: Path, tmp_path: Path) -> None:
    """sort --markdup marks during the merge exactly what markdup on the sorted dataset marks."""
    import numpy as np

    loc = tmp_path / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(simulated_sam),), output=str(loc), name="ds", chunk_size=600))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", group_chunks=2, name="a"))
        a = rt.run(MarkdupRequest(dataset=str(loc), name="a", metrics=str(tmp_path / "a.txt")))
        b = rt.run(SortRequest(dataset=str(loc), input_name="ds", group_chunks=2, name="b", markdup=True,
                               metrics=str(tmp_path / "b.txt"), run_block=211))

    def flags(name: str) -> np.ndarray:
        ds = Dataset.open(loc, name)
        return np.concatenate([ds.read_column(i, "results").fields["flag"] for i in range(len(ds.chunks))])

    assert b.duplicates == a.duplicates > 300
    assert np.array_equal(flags("a"), flags("b"))
    assert read_metrics(str(tmp_path / "a.txt")) == read_metrics(str(tmp_path / "b.txt"))


def test_two_libraries_equal_picard(simulated_sam: Path, tmp_path: Path) -> None:
    """Two read groups of two libraries (RG tags on the records): duplicates only within a library, one
    metrics row per library, as Picard decides and counts them."""
    import zlib

    lines = simulated_sam.read_text().splitlines()
    head = [ln for ln in lines if ln.startswith("@")]
    body = [ln for ln in lines if not ln.startswith("@")]
    head += ["@RG\tID:g1\tSM:s\tLB:libA\tPL:ILLUMINA", "@RG\tID:g2\tSM:s\tLB:libB\tPL:ILLUMINA"]
    tagged = [ln + ("\tRG:Z:g1" if zlib.crc32(ln.split("\t")[0].encode()) % 3 else "\tRG:Z:g2") for ln in body]
    sam = tmp_path / "rg.sam"
    sam.write_text("\n".join(head + tagged) + "\n")
    s, differ, picard_dups = _compare_with_picard(sam, tmp_path, 700)
    assert differ == 0 and s.duplicates == picard_dups > 100
    assert [m["LIBRARY"] for m in s.metrics] == ["Unknown Library", "libA", "libB"]
    one = Dataset.open(tmp_path / "agd", "ds_sorted")
    assert "tags" in one.columns


def test_optical_large_sets_equal_picard(tmp_path: Path) -> None:
    """Optical duplicates in sets of 2, 3, 5 and 1,500 pairs (Illumina names: tile, x, y), with clusters
    linked only through other ends: Picard's clustering for sets of 4 and more, its pairwise comparison
    below; the same READ_PAIR_OPTICAL_DUPLICATES and flags as Picard."""
    rng = random.Random(9)
    ref = "".join(REF.read_text().split("\n")[1:])
    head = ["@HD\tVN:1.6\tSO:unsorted", f"@SQ\tSN:MH356245.1\tLN:{len(ref)}"]
    body = []
    n = 0
    for start, size in ((1000, 2), (3000, 3), (5000, 5), (7000, 1500)):
        centers = [(rng.randrange(1101, 1103), rng.randrange(1000, 30000), rng.randrange(1000, 30000))
                   for _ in range(max(1, size // 12))]
        for k in range(size):
            tile, cx, cy = rng.choice(centers)
            # chains: ends 70 px apart link clusters transitively (each within 100 px of the next)
            x, y = cx + rng.randrange(-150, 150), cy + rng.randrange(-150, 150)
            name = f"M1:7:FC1:1:{tile}:{x}:{y}"
            n += 1
            q1 = "".join(chr(33 + rng.choice([20, 30, 37])) for _ in range(100))
            q2 = "".join(chr(33 + rng.choice([20, 30, 37])) for _ in range(100))
            s1, s2 = ref[start:start + 100], ref[start + 200:start + 300]
            body.append(f"{name}\t99\tMH356245.1\t{start + 1}\t60\t100M\t=\t{start + 201}\t300\t{s1}\t{q1}")
            body.append(f"{name}\t147\tMH356245.1\t{start + 201}\t60\t100M\t=\t{start + 1}\t-300\t{s2}\t{q2}")
    sam = tmp_path / "optical.sam"
    sam.write_text("\n".join(head + body) + "\n")
    s, differ, picard_dups = _compare_with_picard(sam, tmp_path, 800)
    assert differ == 0 and s.duplicates == picard_dups == 2 * (1 + 2 + 4 + 1499)
    assert int(s.metrics[0]["READ_PAIR_OPTICAL_DUPLICATES"]) > 100


def _two_group_header(ref_len: int) -> list[str]:
    return ["@HD\tVN:1.6\tSO:unsorted", f"@SQ\tSN:MH356245.1\tLN:{ref_len}",
            "@RG\tID:g1\tSM:s\tLB:libA\tPL:ILLUMINA", "@RG\tID:g2\tSM:s\tLB:libA\tPL:ILLUMINA"]


def _ours_optical(sam: Path, work: Path) -> int:
    loc = work / "agd"
    with Runtime(threads=2) as rt:
        rt.run(ImportRequest(inputs=(str(sam),), output=str(loc), name="ds", chunk_size=800))
        rt.run(SortRequest(dataset=str(loc), input_name="ds", name="s"))
        s = rt.run(MarkdupRequest(dataset=str(loc), name="s"))
    return sum(int(m["READ_PAIR_OPTICAL_DUPLICATES"]) for m in s.metrics)


def test_optical_within_read_group_equals_picard(tmp_path: Path) -> None:
    """Two read groups of one library, every duplicate set on one tile within the pixel distance: ends of
    different read groups are never optical duplicates of each other (Picard compares getReadGroup), in
    the pairwise comparison (sets of 2 and 3) and in the clustering (4 and more); flags and metrics equal
    Picard's, and fewer optical duplicates than the same records in one read group."""
    rng = random.Random(17)
    ref = "".join(REF.read_text().split("\n")[1:])
    body, one_group = [], []
    for start, size in ((1000, 2), (2000, 2), (3000, 3), (4000, 3), (5000, 4), (6000, 5), (8000, 60)):
        spots = rng.sample([(x, y) for x in range(5000, 5090) for y in range(7000, 7090)], size)
        for k, (x, y) in enumerate(spots):  # all within 100 px of each other; names unique
            name = f"M1:7:FC{start}:1:1101:{x}:{y}"
            g = "g1" if (k % 2 == 0 if size < 4 else rng.random() < 0.5) else "g2"
            q1 = "".join(chr(33 + rng.choice([20, 30, 37])) for _ in range(100))
            q2 = "".join(chr(33 + rng.choice([20, 30, 37])) for _ in range(100))
            s1, s2 = ref[start:start + 100], ref[start + 200:start + 300]
            for line in (f"{name}\t99\tMH356245.1\t{start + 1}\t60\t100M\t=\t{start + 201}\t300\t{s1}\t{q1}",
                         f"{name}\t147\tMH356245.1\t{start + 201}\t60\t100M\t=\t{start + 1}\t-300\t{s2}\t{q2}"):
                body.append(f"{line}\tRG:Z:{g}")
                one_group.append(f"{line}\tRG:Z:g1")
    head = _two_group_header(len(ref))
    sam = tmp_path / "rg_optical.sam"
    sam.write_text("\n".join(head + body) + "\n")
    (tmp_path / "two").mkdir()
    s, differ, picard_dups = _compare_with_picard(sam, tmp_path / "two", 800)
    assert differ == 0 and s.duplicates == picard_dups == 2 * (1 + 1 + 2 + 2 + 3 + 4 + 59)
    optical = int(s.metrics[-1]["READ_PAIR_OPTICAL_DUPLICATES"])
    # the same during a sort's merge (sort --markdup reads the read groups from the carried tags)
    with Runtime(threads=2) as rt:
        rt.run(SortRequest(dataset=str(tmp_path / "two" / "agd"), input_name="ds", name="fused", markdup=True,
                           metrics=str(tmp_path / "fused.txt")))
    assert read_metrics(str(tmp_path / "fused.txt")) == read_metrics(str(tmp_path / "two" / "picard.txt"))
    one = tmp_path / "one.sam"
    one.write_text("\n".join(head + one_group) + "\n")
    (tmp_path / "single").mkdir()
    assert 0 < optical < _ours_optical(one, tmp_path / "single") == 1 + 1 + 2 + 2 + 3 + 4 + 59


def test_optical_read_groups_simulated_equals_picard(simulated_sam: Path, tmp_path: Path) -> None:
    """The simulated set renamed with Illumina names (tile:x:y), each injected duplicate a few pixels from
    the read it copies, and split into two read groups of one library by read name, so that about half
    of the optical pairs cross read groups: every record's flag and every metric equal Picard's."""
    import zlib

    lines = simulated_sam.read_text().splitlines()
    head = [ln for ln in lines if ln.startswith("@") and not ln.startswith("@RG")]
    body = [ln.split("\t") for ln in lines if not ln.startswith("@")]
    rng = random.Random(23)
    where: dict[str, tuple[int, int, int]] = {}
    source: dict[str, str] = {}
    by_seq = {(f[9], int(f[1]) & 0xC0): f[0] for f in body if not f[0].startswith("dup")
              and not int(f[1]) & 0x900}
    for f in body:
        if f[0].startswith("dup") and not int(f[1]) & 0x900 and f[0] not in source:
            hit = by_seq.get((f[9], int(f[1]) & 0xC0))
            if hit is not None:
                source[f[0]] = hit
    for f in body:
        if f[0] not in where and not f[0].startswith("dup"):
            where[f[0]] = (rng.choice((1101, 1102)), rng.randrange(1000, 20000), rng.randrange(1000, 20000))
    for f in body:
        if f[0] not in where:
            src = source.get(f[0])
            if src is not None:
                t, x, y = where[src]
                where[f[0]] = (t, x + rng.randrange(-40, 40), y + rng.randrange(-40, 40))
            else:
                where[f[0]] = (1103, rng.randrange(1000, 20000), rng.randrange(1000, 20000))
    renamed = []
    for f in body:
        t, x, y = where[f[0]]
        g = "g1" if zlib.crc32(f[0].encode()) % 2 else "g2"
        renamed.append("\t".join([f"M1:7:FC1:1:{t}:{x}:{y}", *f[1:], f"RG:Z:{g}"]))
    crossing = sum(1 for d, s in source.items() if (zlib.crc32(d.encode()) % 2) != (zlib.crc32(s.encode()) % 2))
    assert crossing > 50 and len(source) - crossing > 50
    head += ["@RG\tID:g1\tSM:s\tLB:libA\tPL:ILLUMINA", "@RG\tID:g2\tSM:s\tLB:libA\tPL:ILLUMINA"]
    sam = tmp_path / "rg_sim.sam"
    sam.write_text("\n".join(head + renamed) + "\n")
    s, differ, picard_dups = _compare_with_picard(sam, tmp_path, 700)
    assert differ == 0 and s.duplicates == picard_dups > 300
    assert [m["LIBRARY"] for m in s.metrics] == ["Unknown Library", "libA"]
    assert int(s.metrics[1]["READ_PAIR_OPTICAL_DUPLICATES"]) > 20
