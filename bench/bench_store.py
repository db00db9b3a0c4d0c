"""Chunk put/get throughput per store backend: file, ceph, s3.

For each backend, chunk size (1 MiB and 16 MiB: an app's chunk files are in this range) and
number of requests in flight (1 and 8, threads sharing one store as pipeline stages do), it puts
a set of distinct objects, then gets them all back (checking the bytes), and reports MB/s.

    python bench/bench_store.py [--quick] [--backends file,ceph,s3] [--ceph-url URL] [--s3-url URL]

Without --ceph-url/--s3-url it uses the throwaway cluster of deploy/ceph.sh in $PERSONA_CEPH_DIR
(or /tmp/persona-ceph) when one is running there, else starts one in a temporary directory for
the run (and stops it after), reporting how long the start took. A backend that cannot run here
(no Ceph packages) is reported as skipped with the reason. ``--quick`` (under a minute) moves
less data per case. The last line printed is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="less data per case (the whole run under a minute)")
    ap.add_argument("--backends", default="file,ceph,s3")
    ap.add_argument("--sizes", default="1,16", help="chunk sizes in MiB")
    ap.add_argument("--inflight", default="1,8", help="requests in flight")
    ap.add_argument("--mib-per-case", type=int, default=None, help="data per case (default 256, --quick 24)")
    ap.add_argument("--ceph-url", default=None)
    ap.add_argument("--s3-url", default=None)
    ap.add_argument("--ceph-port", type=int, default=40400)
    ap.add_argument("--rgw-port", type=int, default=40480)
    ap.add_argument("--tmp", default=None, help="directory for the file backend (default: a temp dir)")
    args = ap.parse_args(argv)
    args._started = None
    backends = [b for b in args.backends.split(",") if b]
    sizes = [int(s) * MiB for s in args.sizes.split(",")]
    inflights = [int(x) for x in args.inflight.split(",")]
    total = (args.mib_per_case or (24 if args.quick else 256)) * MiB
    notes: dict = {}
    t_start = time.perf_counter()
    args._cluster_dir = None
    if ({"ceph", "s3"} & set(backends)) and not (args.ceph_url and args.s3_url):
        args._cluster_dir = _cluster(args, notes)
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="persona-bench-store-"))
    results: dict[str, object] = {}
    try:
        for backend in backends:
            store = _open(backend, args, notes, tmp)
            if isinstance(store, str):
                results[backend] = {"skipped": store}
                print(f"{backend:5s} skipped: {store}", flush=True)
                continue
            rows = []
            for size in sizes:
                for inflight in inflights:
                    row = _case(store, size, inflight, total)
                    rows.append(row)
                    print(f"{backend:5s} {row['size_mib']:3d} MiB x{inflight}: put {row['put_MBps']:8.1f} MB/s  "
                          f"get {row['get_MBps']:8.1f} MB/s  ({row['objects']} objects)", flush=True)
            results[backend] = {"url": store.url.split("?")[0], "cases": rows}
            if backend == "s3" and args.s3_url is None:
                store._client.delete_bucket(Bucket=store.bucket)  # type: ignore[attr-defined]
            store.close()
    finally:
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
    out = {"bench": "store", "quick": args.quick, "mib_per_case": total // MiB, "cpus": os.cpu_count(),
           "wall_s": round(time.perf_counter() - t_start, 1), **notes, "results": results}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
