"""persona serve: small-request latency through a warm service vs the one-shot CLI, and align
throughput / latency percentiles at 1, 2, 4 (8 without --quick) concurrent requests.

    python bench/bench_service.py [--quick] [--copies N]

Input: the bundled sample (persona/data), its pairs repeated ``--copies`` times for the concurrency
runs. One `persona serve` subprocess on loopback; the same machine and thread budget for the CLI.
Last line: a JSON object. Coordinator capacity, scale-out and recovery benchmarks need the
multi-process coordinator/worker split (not built yet) and are not measured here.
"""
from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_json, table  # noqa: E402

DATA = REPO / "persona" / "data"
R1, R2, REF = DATA / "sample_R1.fastq.gz", DATA / "sample_R2.fastq.gz", DATA / "sample_reference.fasta"
PERSONA = [sys.executable, "-m", "persona.cli"]


def repeat_fastq(dst: Path, copies: int) -> tuple[Path, Path]:
    outs = []
    for src, name in ((R1, "r1.fq.gz"), (R2, "r2.fq.gz")):
        lines = gzip.open(src, "rt").read().splitlines()
        out = dst / name
        with gzip.open(out, "wt", compresslevel=1) as f:
            for c in range(copies):
                for i in range(0, len(lines), 4):
                    head = lines[i].split(None, 1)
                    head[0] = f"{head[0]}_c{c}"
                    f.write(" ".join(head) + "\n" + lines[i + 1] + "\n+\n" + lines[i + 3] + "\n")
        outs.append(out)
    return outs[0], outs[1]


def cli(cfg: Path, *args: str) -> None:
    subprocess.run([*PERSONA, "--config", str(cfg), args[0], "-q", *args[1:]], check=True, timeout=3600)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="under a minute: fewer levels and repeats")
    ap.add_argument("--copies", type=int, default=0, help="sample copies per align request (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=0, help="aligner threads (0: the cores allowed)")
    a = ap.parse_args()
    copies = a.copies or (1 if a.quick else 2)
    levels = [1, 2, 4] if a.quick else [1, 2, 4, 8]
    repeats = 3 if a.quick else 5
    from persona.service.client import Client

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root = Path(tmp)
        cfg = root / "persona.yaml"
        cfg.write_text(f"align:\n  references_url: \"{root / 'refs'}\"\n  threads: {a.threads}\n"
                       f"service:\n  listen: \"127.0.0.1:0\"\n  metrics_listen: null\n"
                       f"  db_path: \"{root / 'state' / 'db'}\"\n  roots: \"{root},{DATA}\"\n")
        cli(cfg, "reference", "add", "sample_reference", str(REF))
        cli(cfg, "import", str(R1), str(R2), "-o", str(root / "small"), "-c", "2000")
        r1, r2 = repeat_fastq(root, copies)
        top = max(levels)
        for k in range(top):
            cli(cfg, "import", str(r1), str(r2), "-o", str(root / f"ds{k}"), "-c", "2000")

        # the one-shot CLI: a fresh process per request (start-up, index load)
        cli_lat = []
        for _ in range(repeats):
            t = time.perf_counter()
            cli(cfg, "align", str(root / "small"), "-r", "sample_reference")
            cli_lat.append(time.perf_counter() - t)

        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
        addr_file = root / "addr"
        proc = subprocess.Popen([*PERSONA, "--config", str(cfg), "serve", "--address-file", str(addr_file)],
                                env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not addr_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("persona serve did not start")
                time.sleep(0.05)
            address = addr_file.read_text().strip()
            token = (root / "state" / "token").read_text().strip()
            c = Client(address, token)
            small = {"kind": "align", "dataset": str(root / "small"), "reference": "sample_reference"}
            c.wait(c.submit(small), timeout=600)  # warm: the index loaded once
            svc_lat = []
            for _ in range(repeats):
                t = time.perf_counter()
                st = c.wait(c.submit(small), timeout=600)
                svc_lat.append(time.perf_counter() - t)
                assert st["state"] == "done", st["error"]

            rows, conc = [], {}
            for n in levels:
                lat: list[float] = []
                records = 0
                lock = threading.Lock()

                def one(k: int) -> None:
                    nonlocal records
                    t = time.perf_counter()
                    st = c.wait(c.submit({"kind": "align", "dataset": str(root / f"ds{k}"),
                                          "reference": "sample_reference"}), timeout=3600)
                    assert st["state"] == "done", st["error"]
                    with lock:
                        lat.append(time.perf_counter() - t)
                        records += st["records_total_done"]

                t0 = time.perf_counter()
                ths = [threading.Thread(target=one, args=(k,)) for k in range(n)]
                for th in ths:
                    th.start()
                for th in ths:
                    th.join(3600)
                wall = time.perf_counter() - t0
                conc[n] = {"throughput_records_s": records / wall, "p50_s": pct(lat, 50), "p99_s": pct(lat, 99),
                           "latencies_s": sorted(lat)}
                rows.append([n, f"{records / wall:,.0f}", f"{pct(lat, 50):.2f}", f"{pct(lat, 99):.2f}"])
            c.close()
        finally:
            proc.terminate()
            proc.wait(120)

    base = conc[1]["throughput_records_s"]
    print(table(["concurrent", "records/s", "p50 s", "p99 s"], rows))
    print(f"throughput at 4 concurrent / 1: {conc[4]['throughput_records_s'] / base:.2f} (goal >= 0.95)")
    m_cli, m_svc = statistics.median(cli_lat), statistics.median(svc_lat)
    print(f"small align (8000 pairs): one-shot CLI {m_cli:.2f} s, warm service {m_svc:.2f} s "
          f"({m_cli / m_svc:.1f}x)")
    emit_json({"bench": "service", "copies": copies, "small_cli_s": m_cli, "small_service_s": m_svc,
               "small_speedup": m_cli / m_svc, "concurrency": conc,
               "throughput_4_over_1": conc[4]["throughput_records_s"] / base})


if __name__ == "__main__":
    main()
