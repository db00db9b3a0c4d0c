"""Alignment accuracy on reads of known origin, agreement with ``bwa mem`` on real reads, and speed.

Simulated pairs on sacCer3 (the yeast reference of ../shared/data), N pairs each (default 1M):

* ``wgsim`` 2x101, 0.1 % mutations (``-r 0.001``; 15 % of them small indels, wgsim's default),
  insert 500 +- 50; the truth is in each read's name (contig, fragment start and end);
* ``art_illumina`` 2x101 (HiSeq 2500 profile), insert 300 +- 30; the truth is ART's own SAM.

Every aligner present is run on the same FASTQ.gz files with the same threads (default 2):
ours -- ``persona align --aligner minimap2`` / ``minibwa`` / ``snap`` (when that backend exists),
AGD in, then exported to SAM for scoring -- and the reference tools ``bwa mem``,
``minimap2 -ax sr``, ``snap-aligner paired`` (seed 20), FASTQ.gz in, SAM out. Indexes are built
once, cached, and not timed; loading them is timed (inside each command).

Per aligner, over all reads (primary records): fraction mapped, fraction correct (same contig,
right strand, clip-aware 5' end within 20 bp of the truth: the start of a forward read, the end
of a reverse one), correct with MAPQ >= 10, and the wrong-at-MAPQ>=10 rate (wrong and MAPQ >= 10,
over all reads and over the reads with MAPQ >= 10). wgsim does not say which mate of a pair is the
forward one, so a wgsim read counts as correct when it is forward at the fragment's start or
reverse at its end.

Real reads (../shared/data yeast 2x50 and human chr20 2x101): agreement of primary positions
(same contig, clip-aware start within 20 bp) with ``bwa mem``'s for the reads both place with
MAPQ >= 20.

Speed: reads/s of every command (index load included; ours: ``persona align`` on the imported
dataset), and the minibwa backend's ratio to ``bwa mem -t T`` on the same reads. Timings are
single runs unless ``--runs``; medians are quoted.

    python bench/bench_align_accuracy.py            # 1M wgsim + 1M ART pairs, full real sets
    python bench/bench_align_accuracy.py --quick    # 10k + 10k pairs, 5k real pairs each (~1 min warm)

Inputs, simulations and indexes are cached under bench/out/accuracy (PERSONA_BENCH_CACHE);
the first run builds them (bwa index of sacCer3: ~15 s CPU; 1M-pair simulations: minutes).
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, emit_json, real_sets, require, shared_data, table

ACC = OUT / "accuracy"
PERSONA = [sys.executable, "-m", "persona.cli"]
READ_LEN = 101
WINDOW = 20
_CIGAR = re.compile(rb"(\d+)([MIDNSHP=X])")


# ------------------------------------------------------------------------------------ inputs
def sac_cer3() -> Path:
    ref = ACC / "sacCer3.fa"
    if not ref.exists():
        ACC.mkdir(parents=True, exist_ok=True)
        with gzip.open(real_sets()["yeast"]["ref"], "rb") as src, open(ref.with_suffix(".tmp"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        ref.with_suffix(".tmp").rename(ref)
    return ref


def human_ref() -> Path:
    return shared_data() / "human_NA12878_chr20" / "hg19_chr20_9995001-11095000.fa"


def genome_length(ref: Path) -> int:
    return sum(len(line.strip()) for line in open(ref, "rb") if not line.startswith(b">"))


def _gzip_to(src: Path, dst: Path) -> None:
    tmp = dst.with_suffix(".tmp")
    with open(src, "rb") as f, gzip.open(tmp, "wb", compresslevel=1) as g:
        shutil.copyfileobj(f, g)
    tmp.rename(dst)
    src.unlink()


def wgsim_pairs(ref: Path, pairs: int, seed: int = 11) -> tuple[Path, Path]:
    d = ACC / f"wgsim_{pairs}"
    r1, r2 = d / "R1.fastq.gz", d / "R2.fastq.gz"
    if not r2.exists():
        d.mkdir(parents=True, exist_ok=True)
        print(f"simulating {pairs} pairs with wgsim into {d} ...", file=sys.stderr, flush=True)
        subprocess.run([require("wgsim"), "-N", str(pairs), "-1", str(READ_LEN), "-2", str(READ_LEN),
                        "-r", "0.001", "-S", str(seed), str(ref), str(d / "r1.fq"), str(d / "r2.fq")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _gzip_to(d / "r1.fq", r1)
        _gzip_to(d / "r2.fq", r2)
    return r1, r2


def art_pairs(ref: Path, pairs: int, seed: int = 7) -> tuple[Path, Path, Path]:
    """ART pairs plus their truth (name, mate, contig, start, end, strand as TSV.gz, from ART's SAM)."""
    d = ACC / f"art_{pairs}"
    r1, r2, truth = d / "R1.fastq.gz", d / "R2.fastq.gz", d / "truth.tsv.gz"
    if not truth.exists():
        d.mkdir(parents=True, exist_ok=True)
        cov = pairs * 2 * READ_LEN / genome_length(ref)
        print(f"simulating ~{pairs} pairs ({cov:.2f}x) with art_illumina into {d} ...", file=sys.stderr, flush=True)
        subprocess.run([require("art_illumina"), "-ss", "HS25", "-i", str(ref), "-p", "-l", str(READ_LEN),
                        "-f", f"{cov:.4f}", "-m", "300", "-s", "30", "-rs", str(seed), "-na", "-sam", "-q",
                        "-o", str(d / "s_")], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(d / "s_.sam", "rb") as f, gzip.open(truth.with_suffix(".tmp"), "wt", compresslevel=1) as out:
            for line in f:
                if line.startswith(b"@"):
                    continue
                p = line.split(b"\t", 6)
                flag, pos = int(p[1]), int(p[3]) - 1
                end = pos + sum(int(n) for n, op in _CIGAR.findall(p[5]) if op in b"MD=XN")
                out.write(f"{p[0].decode()}\t{1 if flag & 0x40 else 2}\t{p[2].decode()}\t{pos}\t{end}\t"
                          f"{int(bool(flag & 16))}\n")
        (d / "s_.sam").unlink()
        _gzip_to(d / "s_1.fq", r1)
        _gzip_to(d / "s_2.fq", r2)
        truth.with_suffix(".tmp").rename(truth)
    return r1, r2, truth


def head_pairs(r1: Path, r2: Path, n: int, d: Path) -> tuple[Path, Path]:
    """The first ``n`` pairs of a FASTQ.gz pair, gzip'ed into ``d`` (cached)."""
    d.mkdir(parents=True, exist_ok=True)
    outs = (d / "R1.fastq.gz", d / "R2.fastq.gz")
    for src, dst in zip((r1, r2), outs):
        if not dst.exists():
            with gzip.open(src, "rt") as f, gzip.open(dst.with_suffix(".tmp"), "wt", compresslevel=1) as g:
                g.writelines(itertools.chain.from_iterable(itertools.islice(zip(*[f] * 4), n)))
            dst.with_suffix(".tmp").rename(dst)
    return outs


# ------------------------------------------------------------------------------------ aligners
class Tool:
    """One aligner: ``prepare(ref)`` (untimed index build), ``align(ref, r1, r2, sam)`` (timed)."""

    name = ""

    def prepare(self, ref: Path) -> None:
        pass

    def align(self, ref: Path, r1: Path, r2: Path, sam: Path) -> tuple[float, float]:
        raise NotImplementedError


def _idx_dir(ref: Path, what: str) -> Path:
    d = ACC / "indexes" / f"{ref.stem}.{what}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], stdout: Path | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one command. CPU time says what a
    command cost even when the shared machine gave it less than its threads' worth of cores."""
    c, t = _children_cpu(), time.perf_counter()
    with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {proc.stderr.decode()[-500:]}")
    return time.perf_counter() - t, _children_cpu() - c


class Bwa(Tool):
    name = "bwa mem"

    def __init__(self, threads: int) -> None:
        self.exe, self.threads = require("bwa"), threads

    def prepare(self, ref: Path) -> None:
        d = _idx_dir(ref, "bwa")
        if not (d / "ref.fa.sa").exists():
            shutil.copy(ref, d / "ref.fa")
            subprocess.run([self.exe, "index", str(d / "ref.fa")], check=True, capture_output=True)

    def align(self, ref: Path, r1: Path, r2: Path, sam: Path) -> tuple[float, float]:
        idx = _idx_dir(ref, "bwa") / "ref.fa"
        return _timed([self.exe, "mem", "-t", str(self.threads), str(idx), str(r1), str(r2)], sam)


class Minimap2(Tool):
    name = "minimap2 -ax sr"

    def __init__(self, threads: int) -> None:
        self.exe, self.threads = require("minimap2"), threads

    def prepare(self, ref: Path) -> None:
        mmi = _idx_dir(ref, "mm2") / "ref.mmi"
        if not mmi.exists():
            subprocess.run([self.exe, "-x", "sr", "-d", str(mmi), str(ref)], check=True, capture_output=True)

    def align(self, ref: Path, r1: Path, r2: Path, sam: Path) -> tuple[float, float]:
        mmi = _idx_dir(ref, "mm2") / "ref.mmi"
        return _timed([self.exe, "-ax", "sr", "-t", str(self.threads), str(mmi), str(r1), str(r2)], sam)


class SnapAligner(Tool):
    name = "snap-aligner s20"

    def __init__(self, threads: int) -> None:
        self.exe, self.threads = require("snap-aligner"), threads

    def prepare(self, ref: Path) -> None:
        d = _idx_dir(ref, "snap20")
        if not (d / "GenomeIndex").exists():
            subprocess.run([self.exe, "index", str(ref), str(d), "-s", "20"], check=True, capture_output=True)

    def align(self, ref: Path, r1: Path, r2: Path, sam: Path) -> tuple[float, float]:
        d = _idx_dir(ref, "snap20")
        return _timed([self.exe, "paired", str(d), str(r1), str(r2), "-t", str(self.threads), "-b-",
                       "-o", str(sam)])


class Persona(Tool):
    """``persona align --aligner X`` on the imported dataset (import and export untimed)."""

    def __init__(self, aligner: str, threads: int) -> None:
        self.aligner, self.threads = aligner, threads
        self.name = f"persona {aligner}"
        self.refs = ACC / "refs"

    def ref_name(self, ref: Path) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", ref.stem)

    def prepare(self, ref: Path) -> None:
        from persona.align.reference import index_id, reference_info
        from persona.errors import PersonaError

        name = self.ref_name(ref)
        try:
            have = reference_info(name, self.refs).indexes
        except PersonaError:
            have = {}
        if index_id(self.aligner, "sr") not in have:
            subprocess.run([*PERSONA, "reference", "add", name, str(ref), "--aligner", self.aligner,
                            "--store", str(self.refs), "-q"], check=True, capture_output=True)

    def align(self, ref: Path, r1: Path, r2: Path, sam: Path) -> tuple[float, float]:
        ds = sam.parent / f"ds_{sam.name.split('.')[0]}"  # one imported dataset per input, realigned
        if not (ds.exists() and any(ds.glob("*_metadata.json"))):
            shutil.rmtree(ds, ignore_errors=True)
            subprocess.run([*PERSONA, "import", str(r1), str(r2), "-o", str(ds), "-n", "reads", "-q"],
                           check=True, capture_output=True)
        t = _timed([*PERSONA, "align", str(ds), "-r", self.ref_name(ref), "--aligner", self.aligner,
                    "--store", str(self.refs), "-t", str(self.threads), "-q"])
        subprocess.run([*PERSONA, "export", str(ds), str(sam), "-f", "sam", "-q"], check=True, capture_output=True)
        return t


def persona_backends() -> list[str]:
    """Our backends to measure: minimap2, minibwa (when its package is installed), snap (when it exists)."""
    from persona.align.base import BACKENDS, backend_module

    out = []
    for name in ("minimap2", "minibwa", "snap"):
        if name not in BACKENDS:
            continue
        try:
            backend_module(name)
        except Exception as e:  # noqa: BLE001 - a backend that cannot load is reported, not measured
            print(f"skipping persona {name}: {e}", file=sys.stderr)
            continue
        out.append(name)
    return out


# ------------------------------------------------------------------------------------ scoring
def primaries(sam: Path) -> Iterator[tuple[str, int, bool, str, int, int, bool, int]]:
    """(name, mate, mapped, contig, clip-aware start, clip-aware end, reverse, mapq) per primary record."""
    with open(sam, "rb") as f:
        for line in f:
            if line[:1] == b"@":
                continue
            p = line.split(b"\t", 6)
            flag = int(p[1])
            if flag & 0x900:
                continue
            name = p[0].decode()
            if name[-2:] in ("/1", "/2"):
                name = name[:-2]
            mate = 2 if flag & 0x80 else 1
            if flag & 4:
                yield name, mate, False, "", 0, 0, False, 0
                continue
            pos = int(p[3]) - 1
            ops = _CIGAR.findall(p[5])
            lead = sum(int(n) for n, op in itertools.takewhile(lambda x: x[1] in b"SH", ops))
            trail = sum(int(n) for n, op in itertools.takewhile(lambda x: x[1] in b"SH", reversed(ops)))
            span = sum(int(n) for n, op in ops if op in b"MD=XN")
            yield name, mate, True, p[2].decode(), pos - lead, pos + span + trail, bool(flag & 16), int(p[4])


def load_art_truth(path: Path) -> dict[tuple[str, int], tuple[str, int, int, bool]]:
    out = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            name, mate, ctg, st, en, rev = line.rstrip("\n").split("\t")
            out[(name, int(mate))] = (ctg, int(st), int(en), rev == "1")
    return out


def is_correct_wgsim(name: str, ctg: str, st: int, en: int, rev: bool) -> bool:
    t_ctg, t_st, t_en, _, _, _ = name.rsplit("_", 5)
    if ctg != t_ctg:
        return False
    return abs(en - int(t_en)) <= WINDOW if rev else abs(st - (int(t_st) - 1)) <= WINDOW


def score(sam: Path, truth: dict[tuple[str, int], tuple[str, int, int, bool]] | None) -> dict[str, float]:
    n = mapped = correct = q10 = correct_q10 = wrong_q10 = 0
    for name, mate, ok, ctg, st, en, rev, mapq in primaries(sam):
        n += 1
        if not ok:
            continue
        mapped += 1
        if truth is None:
            good = is_correct_wgsim(name, ctg, st, en, rev)
        else:
            t = truth.get((name, mate))
            good = (t is not None and t[0] == ctg and t[3] == rev
                    and (abs(en - t[2]) <= WINDOW if rev else abs(st - t[1]) <= WINDOW))
        correct += good
        if mapq >= 10:
            q10 += 1
            correct_q10 += good
            wrong_q10 += not good
    n = max(n, 1)
    return {"reads": n, "mapped": mapped / n, "correct": correct / n, "correct_q10": correct_q10 / n,
            "wrong_q10": wrong_q10 / n, "wrong_among_q10": wrong_q10 / max(q10, 1)}


def agreement(sam: Path, ref_sam: Path) -> dict[str, float]:
    """Share of reads placed with MAPQ >= 20 by both whose clip-aware starts agree within 20 bp."""
    theirs = {(r[0], r[1]): r for r in primaries(ref_sam) if r[2] and r[7] >= 20}
    both = agree = 0
    for r in primaries(sam):
        if not r[2] or r[7] < 20:
            continue
        t = theirs.get((r[0], r[1]))
        if t is None:
            continue
        both += 1
        agree += t[3] == r[3] and abs(t[4] - r[4]) <= WINDOW
    return {"both_q20": both, "agree": agree / max(both, 1)}


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10k simulated pairs per simulator, 5k real pairs")
    ap.add_argument("--pairs", type=int, default=1_000_000, help="simulated pairs per simulator")
    ap.add_argument("--real-pairs", type=int, default=0, help="real pairs per set (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="timed runs per aligner and input (median)")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.real_pairs = 10_000, 5_000
    t = args.threads
    tools: list[Tool] = [Persona(a, t) for a in persona_backends()]
    tools += [Bwa(t), Minimap2(t)]
    if shutil.which("snap-aligner"):
        tools.append(SnapAligner(t))
    else:
        print("snap-aligner not installed (apt-get install snap-aligner): not measured", file=sys.stderr)

    yeast_ref = sac_cer3()
    w1, w2 = wgsim_pairs(yeast_ref, args.pairs)
    a1, a2, art_truth_path = art_pairs(yeast_ref, args.pairs)
    rs = real_sets()
    real = {"yeast": (yeast_ref, rs["yeast"]["r1"], rs["yeast"]["r2"]),
            "human": (human_ref(), rs["human"]["r1"], rs["human"]["r2"])}
    if args.real_pairs:
        real = {k: (ref, *head_pairs(r1, r2, args.real_pairs, ACC / f"real_{k}_{args.real_pairs}"))
                for k, (ref, r1, r2) in real.items()}
    inputs = {"wgsim": (yeast_ref, w1, w2), "art": (yeast_ref, a1, a2), **real}

    for tool in tools:
        for ref in {v[0] for v in inputs.values()}:
            tool.prepare(ref)

    work = ACC / f"run_{args.pairs}_{args.real_pairs}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sams: dict[tuple[str, str], Path] = {}
    speed: dict[tuple[str, str], float] = {}
    cpu_speed: dict[tuple[str, str], float] = {}
    for label, (ref, r1, r2) in inputs.items():
        n_reads = 0
        for tool in tools:
            sam = work / f"{label}.{re.sub(r'[^a-z0-9]+', '_', tool.name)}.sam"
            times = [tool.align(ref, r1, r2, sam) for _ in range(args.runs)]
            sams[(tool.name, label)] = sam
            if not n_reads:
                n_reads = sum(1 for _ in primaries(sam))
            speed[(tool.name, label)] = n_reads / statistics.median(w for w, _ in times)
            cpu_speed[(tool.name, label)] = n_reads / statistics.median(c for _, c in times)
            print(f"{label:6s} {tool.name:18s} {speed[(tool.name, label)]:>10,.0f} reads/s "
                  f"{cpu_speed[(tool.name, label)]:>10,.0f} reads/CPU-s", file=sys.stderr, flush=True)

    art_truth = load_art_truth(art_truth_path)
    result: dict[str, object] = {"pairs": args.pairs, "threads": t, "read_len": READ_LEN, "window": WINDOW}
    rows = []
    for label, truth in (("wgsim", None), ("art", art_truth)):
        for tool in tools:
            s = score(sams[(tool.name, label)], truth)
            result[f"{label}.{tool.name}"] = {**{k: round(v, 6) for k, v in s.items()},
                                              "reads_s": round(speed[(tool.name, label)]),
                                              "reads_cpu_s": round(cpu_speed[(tool.name, label)])}
            rows.append([label, tool.name, f"{100 * s['mapped']:.2f}", f"{100 * s['correct']:.2f}",
                         f"{100 * s['correct_q10']:.2f}", f"{100 * s['wrong_q10']:.4f}",
                         f"{100 * s['wrong_among_q10']:.4f}", f"{speed[(tool.name, label)]:,.0f}",
                         f"{cpu_speed[(tool.name, label)]:,.0f}"])
    print(table(["set", "aligner", "mapped %", "correct %", "correct q10 %", "wrong q10 %",
                 "wrong/q10 %", "reads/s", "reads/CPU-s"], rows))
    rows = []
    bwa = Bwa.name
    for label in real:
        for tool in tools:
            a = agreement(sams[(tool.name, label)], sams[(bwa, label)]) if tool.name != bwa else None
            if a is not None:
                result[f"{label}.{tool.name}"] = {"agree_bwa_q20": round(a["agree"], 6), "both_q20": a["both_q20"],
                                                  "reads_s": round(speed[(tool.name, label)]),
                                                  "reads_cpu_s": round(cpu_speed[(tool.name, label)])}
            else:
                result[f"{label}.{tool.name}"] = {"reads_s": round(speed[(tool.name, label)]),
                                                  "reads_cpu_s": round(cpu_speed[(tool.name, label)])}
            rows.append([label, tool.name, "-" if a is None else f"{100 * a['agree']:.3f}",
                         "-" if a is None else a["both_q20"], f"{speed[(tool.name, label)]:,.0f}",
                         f"{cpu_speed[(tool.name, label)]:,.0f}"])
    print()
    print(table(["real set", "aligner", "agree w/ bwa %", "both MAPQ>=20", "reads/s", "reads/CPU-s"], rows))
    ours = "persona minibwa"
    if any(tl.name == ours for tl in tools):
        ratios = {k: round(speed[(ours, k)] / speed[(bwa, k)], 3) for k in inputs}
        cpu_ratios = {k: round(cpu_speed[(ours, k)] / cpu_speed[(bwa, k)], 3) for k in inputs}
        print(f"\nminibwa backend / bwa mem -t {t}, reads/s: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
              + "; reads per CPU-second: " + ", ".join(f"{k} {v:.2f}x" for k, v in cpu_ratios.items()))
        result["minibwa_vs_bwa_speed"] = ratios
        result["minibwa_vs_bwa_cpu"] = cpu_ratios
    emit_json(result)


if __name__ == "__main__":
    main()
