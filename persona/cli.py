"""The ``persona`` command: a thin layer over the library.

Every sub-command parses its arguments, calls one library function and prints
a short result. Failures print one line (``persona: error: ...``) and return a
non-zero status; ``PERSONA_DEBUG=1`` shows the traceback instead. Operational
flags default from the layered configuration (``persona config show``), so each
has an environment twin ``PERSONA_<SECTION>__<KEY>`` for systemd units.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from persona import __version__
from persona.errors import PersonaError

Handler = Callable[[argparse.Namespace], int]

FASTQ_SUFFIXES = (".fastq", ".fq", ".fastq.gz", ".fq.gz")
SAM_SUFFIXES = (".sam", ".bam")


def _config(args: argparse.Namespace):
    """The effective configuration, loaded once per invocation."""
    if getattr(args, "_cfg", None) is None:
        from persona.config import load_config

        args._cfg = load_config(path=getattr(args, "config", None))
    return args._cfg


def _location(value: str, args: argparse.Namespace) -> str:
    """A dataset location; a bare name ("yeast") resolves under ``storage.default_url``."""
    base = _config(args).storage.default_url
    if not base or "://" in value or "/" in value or os.sep in value or value in (".", "..") \
            or value.startswith("~"):
        return value
    if "://" in base:
        return f"{base.rstrip('/')}/{value}"
    return os.path.join(os.path.expanduser(base), value)


def _progress(total: int | None, label: str):
    from persona.progress import Progress

    return Progress(total=total, desc=label, unit="records")


# -- commands ---------------------------------------------------------------
def cmd_version(args: argparse.Namespace) -> int:
    import numpy
    import zstandard

    from persona import _native  # noqa: F401  (fails loudly if the kernels are not built)

    print(f"persona {__version__} (numpy {numpy.__version__}, zstandard {zstandard.__version__})")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def _config_level(cfg, compression: str) -> int | None:
    return {"zstd": cfg.agd.zstd_level, "gzip": cfg.agd.gzip_level}.get(compression)


def cmd_import(args: argparse.Namespace) -> int:
    cfg = _config(args)
    first = str(args.inputs[0]).lower()
    compression = args.compression or cfg.agd.compression
    chunk_size = args.chunk_size or cfg.agd.chunk_size
    if first.endswith(SAM_SUFFIXES):
        if len(args.inputs) != 1:
            raise PersonaError("SAM/BAM import takes exactly one input file")
        from persona.apps.import_sam import import_sam

        summary = import_sam(args.inputs[0], out=_location(args.output, args), name=args.name,
                             chunk_size=chunk_size, compression=compression)
        skipped = summary.skipped_secondary + summary.skipped_supplementary
        print(f"imported {summary.records} records into {summary.chunks} chunks: {summary.location} "
              f"({summary.name}, sort {summary.sort})"
              + (f"; skipped {skipped} secondary/supplementary records" if skipped else ""))
        return 0
    if not first.endswith(FASTQ_SUFFIXES):
        raise PersonaError(f"cannot tell the format of {args.inputs[0]}: expected "
                           f"{', '.join(FASTQ_SUFFIXES + SAM_SUFFIXES)}")
    if len(args.inputs) > 2:
        raise PersonaError("FASTQ import takes one file (single-end) or two (paired)")
    from persona.apps.import_fastq import import_fastq

    r2 = args.inputs[1] if len(args.inputs) == 2 else None
    with _progress(None, "import") as bar:
        manifest = import_fastq(args.inputs[0], r2, out=_location(args.output, args), name=args.name,
                                chunk_size=chunk_size, compression=compression,
                                level=args.level if args.level is not None else _config_level(cfg, compression),
                                threads=args.threads or cfg.import_.threads,
                                queue_depth=cfg.import_.queue_depth,
                                progress=bar.update)
    n = sum(r.last - r.first for r in manifest.records)
    print(f"imported {n} reads into {len(manifest.records)} chunks: {_location(args.output, args)} ({manifest.name})")
    return 0


def _num_records(location: str) -> int | None:
    from persona.agd import Dataset

    try:
        return Dataset.open(location).num_records
    except PersonaError:
        return None  # the export itself reports the problem


def cmd_export(args: argparse.Namespace) -> int:
    fmt = args.format
    args.dataset = _location(args.dataset, args)
    total = _num_records(args.dataset)
    if fmt is None:
        out = args.output.lower()
        fmt = "bam" if out.endswith(".bam") else "sam" if out.endswith(".sam") else "fastq"
    if fmt == "fastq":
        from persona.apps.export_fastq import export_fastq

        with _progress(total, "export") as bar:
            n = export_fastq(args.dataset, args.output, args.output2, gzip=args.output.endswith(".gz"),
                             progress=bar.update)
        print(f"exported {n} records to {args.output}" + (f" and {args.output2}" if args.output2 else ""))
        return 0
    cfg = _config(args)
    from persona.apps.export_sam import export_sam

    read_group = {k: v for k, v in (("ID", args.rg_id), ("SM", args.rg_sample),
                                    ("LB", args.rg_library), ("PL", args.rg_platform)) if v}
    with _progress(total, "export") as bar:
        summary = export_sam(args.dataset, args.output, fmt=fmt, threads=args.threads or cfg.export.threads,
                             level=cfg.export.bgzf_level, read_group=read_group or None,
                             command_line=" ".join(["persona", *sys.argv[1:]]), progress=bar.update,
                             secondary=not args.no_secondary, secondary_seq=args.secondary_seq)
    sec = f", {summary.secondary_records} secondary" if summary.secondary_records else ""
    print(f"exported {summary.records} records{sec} ({summary.chunks} chunks, {summary.bytes_written:,} bytes, "
          f"SO:{summary.sort_order}) to {summary.path} in {summary.seconds:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from persona.apps.info import dataset_info, format_info

    info = dataset_info(_location(args.dataset, args))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from persona.agd import Dataset
    from persona.agd.verify import verify_dataset

    report = verify_dataset(Dataset.open(_location(args.dataset, args)))
    print(report)
    return 0 if report.ok else 1


def cmd_repair_manifest(args: argparse.Namespace) -> int:
    from persona.agd.verify import repair_manifest

    manifest = repair_manifest(_location(args.location, args), name=args.name)
    n = sum(r.last - r.first for r in manifest.records)
    print(f"rebuilt manifest for {manifest.name}: {len(manifest.records)} chunks, {n} records, "
          f"columns {', '.join(manifest.columns)}")
    return 0


def cmd_reference_add(args: argparse.Namespace) -> int:
    from persona.align.reference import add_reference

    cfg = _config(args)
    ref = add_reference(args.name, args.fasta, store_url=args.store or cfg.align.references_url,
                        aligner=args.aligner, preset=args.preset or cfg.align.preset,
                        overwrite=args.overwrite)
    print(f"reference {ref.name}: {len(ref.contigs)} contigs, {sum(c.length for c in ref.contigs)} bp")
    return 0


def cmd_reference_list(args: argparse.Namespace) -> int:
    from persona.align.reference import list_references

    cfg = _config(args)
    for name in list_references(args.store or cfg.align.references_url):
        print(name)
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from persona.apps.align import align_dataset

    cfg = _config(args)
    args.dataset = _location(args.dataset, args)
    with _progress(_num_records(args.dataset), "align") as bar:
        manifest = align_dataset(args.dataset, args.reference, aligner=args.aligner or cfg.align.aligner,
                                 threads=args.threads or cfg.align.threads,
                                 work_item_reads=args.work_item_reads or cfg.align.work_item_reads,
                                 secondary=args.secondary,
                                 options={"preset": args.preset or cfg.align.preset},
                                 references_url=args.store or cfg.align.references_url,
                                 capacity=cfg.ptf.default_capacity, progress=bar.update)
    print(f"aligned {manifest.name} against {manifest.reference}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from persona.apps.stats import alignment_stats

    stats = alignment_stats(_location(args.dataset, args))
    print(json.dumps(stats.to_dict(), indent=2) if args.json else stats.format())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from persona.apps.demo import run_demo

    return run_demo(workdir=args.workdir)


# -- parser -----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persona", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.environ.get("PERSONA_CONFIG"),
                   help="YAML config file layered over the defaults (env PERSONA_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Handler, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    add("version", cmd_version, "print the version")

    cfg = add("config", lambda a: (cfg.print_help(), 2)[1], "configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    cfg_sub.add_parser("show", help="print the effective configuration").set_defaults(func=cmd_config_show)

    sp = add("import", cmd_import, "import FASTQ(.gz) (one file, or two for pairs) or SAM/BAM into AGD")
    sp.add_argument("inputs", nargs="+", help="R1 [R2] FASTQ(.gz), or one SAM/BAM")
    sp.add_argument("-o", "--output", required=True, help="dataset location (directory or store URL)")
    sp.add_argument("-n", "--name", help="dataset name (default: from the input file name)")
    sp.add_argument("-c", "--chunk-size", type=int, help="records (pairs) per chunk (default 100000)")
    sp.add_argument("--compression", choices=["zstd", "gzip", "none"],
                    help="chunk compression; gzip for datasets the original Persona must read")
    sp.add_argument("--level", type=int, help="compression level")
    sp.add_argument("-t", "--threads", type=int, default=0, help="worker threads (0 = all cores)")

    sp = add("export", cmd_export, "export a dataset to BAM, SAM or FASTQ")
    sp.add_argument("dataset", help="dataset location or manifest path")
    sp.add_argument("output", help="output file (.bam, .sam, .fastq[.gz]; R1 for pairs)")
    sp.add_argument("output2", nargs="?", help="FASTQ output for read 2 of pairs")
    sp.add_argument("-f", "--format", choices=["bam", "sam", "fastq"], help="default: from the suffix")
    sp.add_argument("-t", "--threads", type=int, default=0, help="compression threads (0 = all cores)")
    sp.add_argument("--rg-id", help="@RG ID (default: the dataset name)")
    sp.add_argument("--rg-sample", help="@RG SM (default: the dataset name)")
    sp.add_argument("--rg-library", help="@RG LB")
    sp.add_argument("--rg-platform", help="@RG PL, e.g. ILLUMINA")
    sp.add_argument("--no-secondary", action="store_true",
                    help="SAM/BAM: leave out the secondary<N> columns' alignments (default: write them)")
    sp.add_argument("--secondary-seq", action="store_true",
                    help="SAM/BAM: give secondary records SEQ and QUAL (default '*', as minimap2 writes them)")

    sp = add("info", cmd_info, "show a dataset's columns, records, chunks, sizes and sort order")
    sp.add_argument("dataset")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("verify", cmd_verify, "check every chunk of a dataset")
    sp.add_argument("dataset")

    sp = add("repair-manifest", cmd_repair_manifest, "rebuild a lost manifest from the chunk headers")
    sp.add_argument("location", help="directory or store URL holding the chunks")
    sp.add_argument("-n", "--name", help="dataset name (needed when chunks of several datasets share the location)")

    ref = add("reference", lambda a: (ref.print_help(), 2)[1], "manage reference genomes")
    ref_sub = ref.add_subparsers(dest="reference_command", metavar="SUBCOMMAND")
    sp = ref_sub.add_parser("add", help="index a FASTA for an aligner and store it")
    sp.set_defaults(func=cmd_reference_add)
    sp.add_argument("name")
    sp.add_argument("fasta")
    sp.add_argument("--aligner", default="minimap2")
    sp.add_argument("--preset", help="aligner preset to index for (default: align.preset, 'sr')")
    sp.add_argument("--overwrite", action="store_true", help="replace a reference of the same name")
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")
    sp = ref_sub.add_parser("list", help="list stored references")
    sp.set_defaults(func=cmd_reference_list)
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")

    sp = add("align", cmd_align, "align a dataset's reads; adds the results column")
    sp.add_argument("dataset")
    sp.add_argument("-r", "--reference", required=True, help="reference name (see 'persona reference list')")
    sp.add_argument("--aligner", help="aligner backend (default: align.aligner)")
    sp.add_argument("-t", "--threads", type=int, default=0, help="aligner threads (0 = all cores)")
    sp.add_argument("--work-item-reads", type=int, help="reads per aligner work item")
    sp.add_argument("--secondary", type=int, default=0, help="secondary alignment columns to write")
    sp.add_argument("--preset", help="aligner preset (default: align.preset, 'sr')")
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")

    sp = add("stats", cmd_stats, "alignment summary of a dataset (like samtools flagstat)")
    sp.add_argument("dataset")
    sp.add_argument("--json", action="store_true")

    sp = add("demo", cmd_demo, "the embedded default job on the bundled sample: import, align, export BAM, summary")
    sp.add_argument("--workdir", help="where to put the outputs (default: a new temporary directory)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logging.basicConfig(level=_config(args).logging.level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return rc
    except KeyboardInterrupt:
        print("persona: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`persona stats | head`): stop quietly, like other Unix tools,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (PersonaError, OSError, ValueError) as exc:
        if os.environ.get("PERSONA_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"persona: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
