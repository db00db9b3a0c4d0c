"""Storage benchmarks: chunk throughput per backend, align on Ceph/S3 vs local disk, persona cp.

1. **Chunks.** For each backend (file, ceph, s3), chunk size (1, 4 and 16 MiB: an app's chunk files
   are in this range) and number of requests in flight (1 and 8, threads sharing one store as
   pipeline stages do), it puts a set of distinct objects, then gets them all back (checking the
   bytes), and reports MB/s.
2. **Align.** The same real reads (yeast SRR5204809, the first N pairs; the packaged sample where
   ../shared/data is absent) imported once, copied to each backend, then aligned there with input
   and output in that store (the results column written back to it), same threads, same
   reference (a local index), runs interleaved; median seconds and the ratio local / store
   (goal >= 0.95: I/O overlapped with compute).
3. **cp.** ``persona cp`` of that dataset file -> Ceph -> S3 (MB/s, 8 files in flight) against the
   reference tools moving the same bytes: ``rados put`` (the chunk files concatenated into one
   object per 64 MiB: one process, no per-file start) and ``aws s3 cp --recursive`` of the same
   files (or boto3's ``upload_file`` with 8 threads where the aws CLI is absent: then said so).
4. **sortmem.** Peak memory of ``persona sort`` with input and output on Ceph (phase 1 reads the
   chunks from Ceph, the runs are written to and merged back from Ceph) on 2M and 8M read pairs:
   copies of the 1M simulated pairs aligned by minimap2 (bench_sort.py's cached input; copy k on
   renamed contigs, read names suffixed), ``persona cp`` to Ceph, then ``persona sort`` under
   ``/usr/bin/time``; beside ``samtools sort -@T`` on the same records as BAM (``persona export``
   of the same dataset), default settings for both. Goal: flat (peak at 8M / peak at 2M ~ 1.0).
   ``--quick``: the 100k yeast pairs x2 and x4, with bounds scaled down to such small sets
   (``--group-chunks 1 --merge-memory 64MiB``, ``samtools sort -m 64M``). The 8M set takes a
   few GB of disk in bench/out and minutes to make, once.

    python bench/bench_store.py [--quick] [--backends file,ceph,s3] [--ceph-url URL] [--s3-url URL]
    python bench/bench_store.py --sections sortmem [--quick]     # only the sort memory figures

(``--quick`` leaves sortmem out unless ``--sections`` names it: with it, the run would pass a minute.)

Without --ceph-url/--s3-url it uses the throwaway cluster of deploy/ceph.sh in $PERSONA_CEPH_DIR
(or /tmp/persona-ceph) when one is running there, else starts one in a temporary directory for
the run (and stops it after), reporting how long the start took. A backend that cannot run here
(no Ceph packages) is reported as skipped with the reason. ``--quick`` (under a minute) moves
less data per case and aligns fewer reads once. The last line printed is one JSON object with
every number.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from persona.storage import Store, open_store  # noqa: E402

MiB = 1024 * 1024


def _cluster(args: argparse.Namespace, notes: dict) -> Path | None:
    """A running deploy/ceph.sh cluster directory (started here if need be), or None."""
    script = REPO / "deploy" / "ceph.sh"
    missing = [b for b in ("ceph-mon", "ceph-osd", "radosgw") if shutil.which(b) is None]
    if missing:
        notes["cluster"] = f"not available: {', '.join(missing)} missing (apt-get install ceph-mon ceph-osd radosgw)"
        return None
    existing = Path(os.environ.get("PERSONA_CEPH_DIR", "/tmp/persona-ceph"))
    if (existing / "ceph.conf").is_file() and subprocess.run(
            ["bash", str(script), "status", str(existing)], capture_output=True, timeout=30).returncode == 0:
        notes["cluster"] = f"existing cluster in {existing}"
        return existing
    root = Path(tempfile.mkdtemp(prefix="persona-bench-ceph-"))
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(script), "start", str(root)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, CEPH_PORT=str(args.ceph_port), RGW_PORT=str(args.rgw_port)))
    notes["cluster_start_s"] = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        notes["cluster"] = f"deploy/ceph.sh start failed: {proc.stderr.strip()[-300:]}"
        shutil.rmtree(root, ignore_errors=True)
        return None
    notes["cluster"] = f"started for this run in {root}: {proc.stdout.strip()}"
    args._started = root
    return root


def _open(backend: str, args: argparse.Namespace, notes: dict, tmp: Path) -> Store | str:
    """The store to measure, or the reason it cannot be measured."""
    run = uuid.uuid4().hex[:8]
    if backend == "file":
        return open_store(str(tmp / f"file-store-{run}"))
    if backend == "ceph":
        try:
            import rados  # noqa: F401
        except ImportError:
            return "python3-rados is not importable (apt-get install python3-rados; bash deploy/setup.sh)"
        url = args.ceph_url
        if url is None:
            root = args._cluster_dir
            if root is None:
                return notes.get("cluster", "no cluster")
            url = (f"ceph://persona/bench-{run}?conf={root}/ceph.conf&id=persona"
                   f"&keyring={root}/client.persona.keyring")
        return open_store(url)
    if backend == "s3":
        try:
            import boto3  # noqa: F401
        except ImportError:
            return "boto3 is not installed (pip install 'persona-genomics[s3]')"
        url = args.s3_url
        if url is None:
            root = args._cluster_dir
            if root is None:
                return notes.get("cluster", "no cluster")
            for line in (root / "s3.env").read_text().splitlines():
                k, _, v = line.removeprefix("export ").partition("=")
                os.environ[k] = v
            url = f"s3://persona-bench-{run}/chunks?endpoint={os.environ['PERSONA_S3_ENDPOINT']}"
        store = open_store(url)
        store.create_bucket()  # type: ignore[attr-defined]
        return store
    return f"unknown backend {backend!r}"


def _case(store: Store, size: int, inflight: int, total: int) -> dict:
    n = max(inflight, 4, total // size)
    payloads = [os.urandom(64) + bytes([i % 256]) * (size - 64) for i in range(min(n, 4))]
    keys = [f"bench_{size}_{inflight}_{i}.base" for i in range(n)]

    def put(i: int) -> None:
        store.put(keys[i], payloads[i % len(payloads)])

    def get(i: int) -> None:
        if store.get(keys[i]) != payloads[i % len(payloads)]:
            raise AssertionError(f"{keys[i]} came back different")

    with ThreadPoolExecutor(inflight) as pool:
        t0 = time.perf_counter()
        list(pool.map(put, range(n)))
        t1 = time.perf_counter()
        list(pool.map(get, range(n)))
        t2 = time.perf_counter()
        list(pool.map(lambda i: store.delete(keys[i]), range(n)))
    mb = n * size / 1e6
    return {"size_mib": size // MiB, "inflight": inflight, "objects": n,
            "put_MBps": round(mb / (t1 - t0), 1), "get_MBps": round(mb / (t2 - t1), 1)}


def _reads(pairs: int, notes: dict, note: str = "align_reads") -> tuple[Path, Path]:
    """The first ``pairs`` pairs of yeast SRR5204809 as plain FASTQ in bench/out (cached)."""
    import gzip
    import itertools

    sys.path.insert(0, str(REPO / "bench"))
    out = REPO / "bench" / "out" / f"store_yeast_{pairs}"
    try:
        from _common import real_sets

        src = real_sets()["yeast"]
        notes[note] = f"yeast SRR5204809, first {pairs} pairs (2x50)"
    except SystemExit:
        src = {"r1": REPO / "persona" / "data" / "sample_R1.fastq.gz", "r2": REPO / "persona" / "data" /
               "sample_R2.fastq.gz", "ref": REPO / "persona" / "data" / "sample_reference.fasta"}
        out = REPO / "bench" / "out" / f"store_sample_{pairs}"
        notes[note] = "../shared/data absent: the packaged measles sample (4,000 pairs)"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in ("r1", "r2"):
        dst = out / f"{k}.fastq"
        if not dst.exists():
            with gzip.open(src[k], "rt") as f, open(dst.with_suffix(".tmp"), "w") as o:
                o.write("".join(itertools.chain.from_iterable(itertools.islice(zip(*[f] * 4), pairs))))
            os.replace(dst.with_suffix(".tmp"), dst)
        files.append(dst)
    refs = out.parent / f"store_refs_{out.name.split('_')[1]}"  # one index for every read count
    if not (refs / "ref" / "reference.json").exists():
        from persona.align.reference import add_reference

        add_reference("ref", src["ref"], str(refs))
    return files[0], files[1]


def _bench_align(stores: dict[str, str], args: argparse.Namespace, notes: dict, tmp: Path) -> dict:
    """Align one dataset with input and output in each store; median seconds, ratio local / store."""
    from persona.apps.align import AlignRequest
    from persona.apps.copy import copy_dataset
    from persona.apps.importer import ImportRequest
    from persona.runtime import Runtime

    pairs = args.pairs or (10_000 if args.quick else 100_000)
    chunk = args.chunk_pairs or max(1000, pairs // 5)
    r1, r2 = _reads(pairs, notes)
    refs = str(r1.parent.parent / f"store_refs_{r1.parent.name.split('_')[1]}")
    local = str(tmp / "align-local")
    out: dict = {"pairs": pairs, "chunk_pairs": chunk, "threads": args.threads, "runs": args.runs}
    with Runtime(threads=args.threads) as rt:
        rt.run(ImportRequest(inputs=(str(r1), str(r2)), output=local, name="reads", chunk_size=chunk))
        locs = {"file": local}
        for backend, url in stores.items():
            copy_dataset(local, url, threads=8)
            locs[backend] = url
        # untimed warm-up: the reference index loads once per process, the aligner's pool starts
        rt.run(AlignRequest(dataset=local, reference="ref", references_url=refs))
        times: dict[str, list[float]] = {b: [] for b in locs}
        cpus: dict[str, list[float]] = {b: [] for b in locs}
        daemons: dict[str, list[float]] = {b: [] for b in locs}
        for _ in range(args.runs):  # interleaved: drift on a shared machine hits every backend alike
            for backend, loc in locs.items():
                d0, c0, t0 = _daemon_cpu(args._cluster_dir), _self_cpu(), time.perf_counter()
                rt.run(AlignRequest(dataset=loc, reference="ref", references_url=refs))
                times[backend].append(time.perf_counter() - t0)
                cpus[backend].append(_self_cpu() - c0)
                daemons[backend].append(_daemon_cpu(args._cluster_dir) - d0)
    med = {b: statistics.median(v) for b, v in times.items()}
    out["seconds"] = {b: round(v, 3) for b, v in med.items()}
    out["ratio_local_over_store"] = {b: round(med["file"] / med[b], 3) for b in locs if b != "file"}
    # CPU seconds (this process, every thread) and the Ceph daemons' CPU seconds: on a loaded shared
    # machine the wall ratio moves with the neighbours' load; these say what the store itself cost.
    out["cpu_seconds"] = {b: round(statistics.median(v), 3) for b, v in cpus.items()}
    out["ceph_daemons_cpu_seconds"] = {b: round(statistics.median(v), 3) for b, v in daemons.items()}
    for b, v in med.items():
        ratio = f"  ratio local/{b} {med['file'] / v:.3f}" if b != "file" else ""
        print(f"align {b:5s} {pairs} pairs, {args.threads} threads: median {v:.2f} s (cpu "
              f"{out['cpu_seconds'][b]:.2f} s, ceph daemons {out['ceph_daemons_cpu_seconds'][b]:.2f} s){ratio}",
              flush=True)
    try:
        out["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return out


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _daemon_cpu(root: Path | None) -> float:
    """CPU seconds used so far by the deploy/ceph.sh daemons (mon, OSD, radosgw) of ``root``."""
    if root is None:
        return 0.0
    total = 0.0
    for pidfile in (root / "run").glob("*.pid"):
        try:
            fields = Path(f"/proc/{int(pidfile.read_text())}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


def _cp_dataset(args: argparse.Namespace, notes: dict) -> str:
    """The dataset ``persona cp`` moves: all 100,000 yeast pairs in chunks of 10,000 (6.5 MB), or
    without --quick the simulated 1M pairs of bench/out/sim_1000000 when another bench made them;
    imported once into bench/out and reused."""
    from persona.apps.importer import ImportRequest
    from persona.runtime import Runtime

    sim = REPO / "bench" / "out" / "sim_1000000"
    if not args.quick and (sim / "sim_R1.fastq.gz").exists():
        r1, r2, tag = sim / "sim_R1.fastq.gz", sim / "sim_R2.fastq.gz", "sim1m"
        notes["cp_reads"] = "simulated 1M pairs of sacCer3 (bench/out/sim_1000000)"
    else:
        r1, r2 = _reads(100_000, notes, "cp_reads")
        tag = r1.parent.name
        notes["cp_reads"] += ", chunks of 10,000 pairs"
    loc = REPO / "bench" / "out" / f"store_cp_{tag}"
    if not (loc / "reads_metadata.json").exists():
        shutil.rmtree(loc, ignore_errors=True)
        with Runtime(threads=args.threads) as rt:
            rt.run(ImportRequest(inputs=(str(r1), str(r2)), output=str(loc), name="reads", chunk_size=10_000))
    return str(loc)


def _dataset_files(loc: str) -> list[Path]:
    return sorted(p for p in Path(loc).iterdir() if p.is_file() and "_metadata" not in p.name
                  and "writer" not in p.name)


def _wipe(store: Store) -> None:
    for k in store.list():
        store.delete(k)


def _bench_cp(local: str, ceph: Store | None, s3: Store | None, root: Path | None, tmp: Path, runs: int,
              notes: dict) -> dict:
    """persona cp file -> ceph -> s3 against rados put / aws s3 cp / boto3 of the same bytes;
    ``runs`` rounds, each ours then the references (interleaved), medians."""
    from persona.apps.copy import copy_dataset

    files = _dataset_files(local)
    mb = sum(p.stat().st_size for p in files) / 1e6
    out: dict = {"files": len(files), "MB": round(mb, 1), "runs": runs, "cp_threads": 8}
    times: dict[str, list[float]] = {}

    def timed_run(label: str, fn: object) -> None:
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.setdefault(label, []).append(time.perf_counter() - t0)

    # the references' inputs, made before any timing: rados put takes the chunk files
    # concatenated (one object per 64 MiB), aws s3 cp / boto3 the files themselves
    blobs: list[Path] = []
    group: list[Path] = []
    for p in [*files, None]:
        if p is None or (group and sum(q.stat().st_size for q in group) + p.stat().st_size > 64 * MiB):
            b = tmp / f"blob.{len(blobs)}"
            with open(b, "wb") as o:
                for q in group:
                    o.write(q.read_bytes())
            blobs.append(b)
            group = []
        if p is not None:
            group.append(p)
    staging = tmp / "aws-src"
    staging.mkdir(exist_ok=True)
    for p in files:
        os.link(p, staging / p.name)
    endpoint = os.environ.get("PERSONA_S3_ENDPOINT")
    aws = shutil.which("aws")
    if s3 is not None and aws is None:
        notes["aws_cli"] = "absent: boto3 upload_file is the only reference"
    client = None
    if s3 is not None:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)

    for _ in range(runs):
        src: object = local
        if ceph is not None and root is not None:
            dst_ceph = ceph.child(f"cp-{uuid.uuid4().hex[:8]}")
            timed_run("file_to_ceph persona cp", lambda: copy_dataset(local, dst_ceph, threads=8))
            ns = f"bench-rados-{uuid.uuid4().hex[:8]}"
            base = ["rados", "-c", str(root / "ceph.conf"), "--id", "persona", "--keyring",
                    str(root / "client.persona.keyring"), "-p", "persona", "-N", ns]

            def rados_put() -> None:
                for i, b in enumerate(blobs):
                    subprocess.run([*base, "put", f"blob{i}", str(b)], check=True, capture_output=True, timeout=300)

            timed_run("file_to_ceph rados put", rados_put)
            for i, _b in enumerate(blobs):
                subprocess.run([*base, "rm", f"blob{i}"], capture_output=True, timeout=60)
            src = dst_ceph
        if s3 is not None and client is not None:
            dst_s3 = s3.child(f"cp-{uuid.uuid4().hex[:8]}")
            timed_run("to_s3 persona cp", lambda: copy_dataset(src, dst_s3, threads=8))  # type: ignore[arg-type]
            bucket = s3.bucket  # type: ignore[attr-defined]
            if aws is not None:
                cmd = [aws, "s3", "cp", "--recursive", "--only-show-errors", str(staging),
                       f"s3://{bucket}/aws-cp-{uuid.uuid4().hex[:8]}"] + (["--endpoint-url", endpoint] if endpoint else [])

                def aws_cp() -> None:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                    if proc.returncode != 0:
                        raise RuntimeError(f"aws s3 cp failed: {proc.stderr.strip()[-300:]}")

                timed_run("to_s3 aws s3 cp --recursive", aws_cp)
            prefix = f"boto3-{uuid.uuid4().hex[:8]}"

            def boto3_upload() -> None:
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda p: client.upload_file(str(p), bucket, f"{prefix}/{p.name}"), files))

            timed_run("to_s3 boto3 upload_file x8", boto3_upload)
            _wipe(dst_s3)
        if not isinstance(src, str):
            _wipe(src)  # type: ignore[arg-type]

    med = {k: statistics.median(v) for k, v in times.items()}
    if "file_to_ceph persona cp" in med:
        ours, ref = med["file_to_ceph persona cp"], med["file_to_ceph rados put"]
        out["file_to_ceph"] = {"persona_cp_MBps": round(mb / ours, 1), "rados_put_MBps": round(mb / ref, 1),
                               "ratio": round(ref / ours, 3)}
        print(f"cp    file->ceph {mb:.1f} MB: persona cp {mb / ours:8.1f} MB/s  rados put {mb / ref:8.1f} MB/s  "
              f"ratio {ref / ours:.3f}  (medians of {runs})", flush=True)
    if "to_s3 persona cp" in med:
        leg = "ceph_to_s3" if ceph is not None else "file_to_s3"
        ours = med["to_s3 persona cp"]
        refs = {k.removeprefix("to_s3 "): v for k, v in med.items() if k.startswith("to_s3 ") and "persona" not in k}
        best = min(refs, key=refs.__getitem__)
        out[leg] = {"persona_cp_MBps": round(mb / ours, 1),
                    "references_MBps": {k: round(mb / v, 1) for k, v in refs.items()},
                    "references_from": "local files (the reference tools cannot read Ceph)",
                    "ratio_vs_fastest_reference": round(refs[best] / ours, 3)}
        shown = "  ".join(f"{k} {mb / v:8.1f} MB/s" for k, v in refs.items())
        print(f"cp    {leg.replace('_to_', '->')} {mb:.1f} MB: persona cp {mb / ours:8.1f} MB/s  {shown}  "
              f"ratio vs {best} {refs[best] / ours:.3f}  (medians of {runs})", flush=True)
    return out


def _bench_sortmem(ceph: Store, args: argparse.Namespace, notes: dict, tmp: Path) -> dict:
    """Peak RSS (MiB) and seconds of persona sort, input and output on Ceph, at two scales, and of
    samtools sort on the same records as BAM; the growth of each peak from the small to the large."""
    sys.path.insert(0, str(REPO / "bench"))
    from bench_sort import aligned_inputs, replicated, timed_runs

    from persona.agd import Dataset

    persona = [sys.executable, "-m", "persona.cli"]
    t = str(args.threads)
    inp = aligned_inputs(args.quick, 1_000_000, args.threads)
    agd = inp["agd"]
    base = Dataset.open(agd, "aligned")
    pairs = base.num_records // 2
    copies = (2, 4) if args.quick else (2, 8)
    # --quick: small sets, so smaller bounds (both tools), else the data would fit under them
    group = ["--group-chunks", "1", "--merge-memory", str(64 * MiB)] if args.quick else []
    st_mem = ["-m", "64M"] if args.quick else []
    notes["sortmem_reads"] = (f"the yeast set ({pairs} pairs) x{copies[0]} and x{copies[1]}; persona sort "
                              "--group-chunks 1 --merge-memory 64MiB, samtools sort -m 64M"
                              if args.quick else f"{pairs} simulated pairs (sacCer3, art_illumina, minimap2) "
                              f"x{copies[0]} and x{copies[1]}")
    runs = args.sortmem_runs or (1 if args.quick else 3)
    out: dict = {"threads": args.threads, "copies": list(copies), "base_pairs": pairs}
    for k in copies:
        name = "aligned" if k == 1 else replicated(agd, "aligned", k)
        ds = Dataset.open(agd, name)
        label = f"{ds.num_records / 2e6:.1f}M_pairs"
        dest = ceph.child(f"sortmem-{k}x-{uuid.uuid4().hex[:6]}")
        try:
            t0 = time.perf_counter()
            subprocess.run([*persona, "cp", str(agd), dest.url, "-n", name, "-t", "8", "--quiet"], check=True,
                           timeout=3600)
            cp_s = time.perf_counter() - t0
            # peak RSS varies by some tens of MiB from run to run (allocator timing): medians of --runs
            walls, peaks = timed_runs([*persona, "sort", dest.url, "-n", name, "--out-name", "sorted", "-t", t,
                                   *group, "--overwrite", "--quiet"], runs)
            wall, peak = statistics.median(walls), statistics.median(peaks)
            got = Dataset.open(dest.url, "sorted")
            if got.num_records != ds.num_records or got.manifest.sort != "coordinate":
                raise SystemExit(f"sort on Ceph wrote {got.num_records} records ({got.manifest.sort}), "
                                 f"expected {ds.num_records} coordinate-sorted")
        finally:
            _wipe(dest)
        bam = agd.parent / f"{name}.bam"
        if not bam.exists():  # the same records for samtools (cached beside the dataset)
            subprocess.run([*persona, "export", str(agd), str(bam.with_suffix(".tmp.bam")), "-n", name, "-f", "bam",
                            "-t", t, "--quiet"], check=True, timeout=3600)
            os.replace(bam.with_suffix(".tmp.bam"), bam)
        st_walls, st_peaks = timed_runs(["samtools", "sort", "-@", t, *st_mem, "-o", str(tmp / "st.bam"), str(bam)], runs)
        st_wall, st_peak = statistics.median(st_walls), statistics.median(st_peaks)
        (tmp / "st.bam").unlink(missing_ok=True)
        out[label] = {"records": ds.num_records, "chunks": len(ds.chunks), "cp_s": round(cp_s, 1),
                      "persona_sort_s": round(wall, 1), "persona_sort_peak_mib": round(peak, 1),
                      "samtools_sort_s": round(st_wall, 1), "samtools_sort_peak_mib": round(st_peak, 1),
                      "runs": runs, "persona_sort_peaks_mib": [round(x) for x in peaks],
                      "samtools_sort_peaks_mib": [round(x) for x in st_peaks]}
        print(f"sortmem {label} ({ds.num_records} records, {len(ds.chunks)} chunks) on ceph, medians of {runs}: "
              f"persona sort {wall:.1f} s, peak {peak:.0f} MiB (runs {'/'.join(f'{x:.0f}' for x in peaks)});  "
              f"samtools sort -@{t} (local BAM) {st_wall:.1f} s, peak {st_peak:.0f} MiB "
              f"(runs {'/'.join(f'{x:.0f}' for x in st_peaks)})", flush=True)
    small, large = (out[k] for k in list(out)[-2:])
    out["peak_growth"] = {
        "persona_sort": round(large["persona_sort_peak_mib"] / small["persona_sort_peak_mib"], 3),
        "samtools_sort": round(large["samtools_sort_peak_mib"] / small["samtools_sort_peak_mib"], 3)}
    out["persona_over_samtools_peak"] = round(large["persona_sort_peak_mib"] / large["samtools_sort_peak_mib"], 3)
    print(f"sortmem peak growth x{copies[1] // copies[0]} records: persona sort {out['peak_growth']['persona_sort']:.3f}"
          f"  samtools sort {out['peak_growth']['samtools_sort']:.3f}  (goal ~1.0: flat)", flush=True)
    return out


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a whole number of at least 1")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="less data per case (the whole run under a minute)")
    ap.add_argument("--backends", default="file,ceph,s3")
    ap.add_argument("--sizes", default=None, help="chunk sizes in MiB (default 1,4,16; --quick 1,4)")
    ap.add_argument("--inflight", default="1,8", help="requests in flight")
    ap.add_argument("--mib-per-case", type=int, default=None, help="data per case (default 256, --quick 8)")
    ap.add_argument("--sections", default=None, help="which parts to run (default chunks,align,cp,sortmem; "
                    "--quick: chunks,align,cp, each part under a minute on its own)")
    ap.add_argument("--pairs", type=int, default=None, help="read pairs to align (default 100000, --quick 10000)")
    ap.add_argument("--chunk-pairs", type=int, default=None, help="pairs per chunk of the aligned dataset "
                    "(default: a fifth of them)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="align threads (all backends)")
    ap.add_argument("--runs", type=int, default=None, help="align runs per backend (default 3, --quick 1)")
    ap.add_argument("--sortmem-runs", type=_positive_int, default=None, help="runs of each sort per scale, medians "
                    "quoted (default 3, --quick 1)")
    ap.add_argument("--ceph-url", default=None)
    ap.add_argument("--s3-url", default=None)
    ap.add_argument("--ceph-port", type=int, default=40400)
    ap.add_argument("--rgw-port", type=int, default=40480)
    ap.add_argument("--tmp", default=None, help="directory for the file backend (default: a temp dir)")
    args = ap.parse_args(argv)
    args._started = None
    args.runs = args.runs or (1 if args.quick else 3)
    backends = [b for b in args.backends.split(",") if b]
    sections = {x for x in (args.sections or ("chunks,align,cp" if args.quick else "chunks,align,cp,sortmem"))
                .split(",") if x}
    sizes = [int(s) * MiB for s in (args.sizes or ("1,4" if args.quick else "1,4,16")).split(",")]
    inflights = [int(x) for x in args.inflight.split(",")]
    total = (args.mib_per_case or (8 if args.quick else 256)) * MiB
    notes: dict = {}
    t_start = time.perf_counter()
    args._cluster_dir = None
    if ({"ceph", "s3"} & set(backends)) and not (args.ceph_url and args.s3_url):
        args._cluster_dir = _cluster(args, notes)
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="persona-bench-store-"))
    results: dict[str, object] = {}
    out: dict = {}
    made_buckets: list[Store] = []
    try:
        stores: dict[str, Store] = {}
        for backend in backends:
            store = _open(backend, args, notes, tmp)
            if isinstance(store, str):
                results[backend] = {"skipped": store}
                print(f"{backend:5s} skipped: {store}", flush=True)
                continue
            stores[backend] = store
            if backend == "s3" and args.s3_url is None:
                made_buckets.append(store)
        if "chunks" in sections:
            for backend, store in stores.items():
                rows = []
                for size in sizes:
                    for inflight in inflights:
                        row = _case(store, size, inflight, total)
                        rows.append(row)
                        print(f"{backend:5s} {row['size_mib']:3d} MiB x{inflight}: put {row['put_MBps']:8.1f} MB/s  "
                              f"get {row['get_MBps']:8.1f} MB/s  ({row['objects']} objects)", flush=True)
                results[backend] = {"url": store.url.split("?")[0], "cases": rows}
        remote = {b: st.child(f"align-{uuid.uuid4().hex[:6]}").url for b, st in stores.items() if b != "file"}
        if "align" in sections:
            out["align"] = _bench_align(remote, args, notes, tmp)
        if "cp" in sections and ({"ceph", "s3"} & set(stores)):
            local = _cp_dataset(args, notes)
            out["cp"] = _bench_cp(local, stores.get("ceph"), stores.get("s3"), args._cluster_dir, tmp, args.runs,
                                  notes)
        if "sortmem" in sections:
            if "ceph" in stores:
                out["sortmem"] = _bench_sortmem(stores["ceph"], args, notes, tmp)
            else:
                out["sortmem"] = {"skipped": "needs the ceph backend"}
        for backend, store in stores.items():
            if backend != "file":
                for k in store.list():
                    store.delete(k)
    finally:
        for store in made_buckets:
            try:
                client, bucket = store._client, store.bucket  # type: ignore[attr-defined]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    for obj in page.get("Contents", ()):
                        client.delete_object(Bucket=bucket, Key=obj["Key"])
                client.delete_bucket(Bucket=bucket)
            except Exception as exc:  # noqa: BLE001 - a leftover bucket on a throwaway cluster
                notes["cleanup"] = str(exc)
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
        if args._started is not None:
            try:
                from persona.storage.ceph import shutdown_connections

                shutdown_connections()
            except ImportError:
                pass
            subprocess.run(["bash", str(REPO / "deploy" / "ceph.sh"), "purge", str(args._started)],
                           capture_output=True, timeout=120)
    summary = {"bench": "store", "quick": args.quick, "mib_per_case": total // MiB, "cpus": os.cpu_count(),
               "wall_s": round(time.perf_counter() - t_start, 1), **notes, "chunks": results, **out}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
