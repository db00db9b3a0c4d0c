"""The ``persona`` command: turns arguments into requests and prints their summaries.

Every sub-command builds one request (:mod:`persona.apps`; the same request the
service builds from a gRPC message), runs it on a process :class:`~persona.runtime.Runtime`
and prints the summary. Standard output carries data only (``-`` as an output
means standard output); summaries, progress and errors go to standard error.
Failures print one line (``persona: error: ...``) and return a non-zero status;
``PERSONA_DEBUG=1`` shows the traceback instead. Operational flags default from
the layered configuration (``persona config show``), so each has an environment
twin ``PERSONA_<SECTION>__<KEY>`` for systemd units.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from persona import __version__
from persona.errors import PersonaError

Handler = Callable[[argparse.Namespace], int]


# -- argument types ------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _level(text: str) -> int:
    v = _non_negative(text)
    if v > 22:
        raise argparse.ArgumentTypeError(f"compression level must be at most 22, got {v}")
    return v


def parse_read_group(text: str) -> dict[str, str]:
    """``@RG\\tID:x\\tSM:y`` (tabs as real tabs or ``\\t``, as bwa and minimap2 take it) -> tags."""
    line = text.replace("\\t", "\t")
    fields = line.split("\t")
    if fields[0] != "@RG":
        raise argparse.ArgumentTypeError(f"a read group starts with @RG, got {text!r}")
    tags: dict[str, str] = {}
    for f in fields[1:]:
        if not f:
            continue
        if len(f) < 4 or f[2] != ":":
            raise argparse.ArgumentTypeError(f"read group field {f!r} is not TAG:VALUE")
        tags[f[:2]] = f[3:]
    if "ID" not in tags:
        raise argparse.ArgumentTypeError("a read group needs an ID (@RG\\tID:...)")
    return tags


# -- shared state ------------------------------------------------------------------
def _config(args: argparse.Namespace) -> Any:
    """The effective configuration, loaded once per invocation."""
    if getattr(args, "_cfg", None) is None:
        from persona.config import load_config, set_config

        args._cfg = load_config(path=getattr(args, "config", None))
        set_config(args._cfg)
    return args._cfg


def _runtime(args: argparse.Namespace, threads: int | None = None) -> Any:
    if getattr(args, "_rt", None) is None:
        from persona.runtime import Runtime

        args._rt = Runtime(_config(args), threads=threads or None)
    return args._rt


def _location(value: str, args: argparse.Namespace) -> str:
    from persona.apps.locations import resolve_location

    return resolve_location(value, _config(args))


def _say(args: argparse.Namespace, text: str) -> None:
    """A summary line: standard error, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _progress(args: argparse.Namespace, total: int | None, label: str) -> Any:
    from persona.progress import Progress

    if getattr(args, "quiet", False):
        return Progress(total=total, desc=label, unit="records", enabled=False)
    return Progress(total=total, desc=label, unit="records")


def _num_records(location: str, name: str | None = None) -> int | None:
    from persona.agd import Dataset

    try:
        return Dataset.open(location, name).num_records
    except PersonaError:
        return None  # the command itself reports the problem


def _run(args: argparse.Namespace, request: Any, total: int | None, label: str, threads: int | None = None) -> Any:
    rt = _runtime(args, threads)
    with _progress(args, total, label) as bar:
        return rt.run(request, progress=bar.update)


# -- commands ------------------------------------------------------------------------
def _version_text() -> str:
    import numpy
    import zstandard

    from persona import _native  # noqa: F401  (fails loudly if the kernels are not built)

    from persona.apps.align import aligner_version

    mm2_version = aligner_version("minimap2") or "?"
    return (f"persona {__version__} (minimap2 {mm2_version}, numpy {numpy.__version__}, "
            f"zstandard {zstandard.__version__})")


def cmd_version(args: argparse.Namespace) -> int:
    print(_version_text())
    return 0


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *a: Any, **kw: Any) -> None:
        print(_version_text())
        parser.exit(0)


def cmd_config_show(args: argparse.Namespace) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from persona.apps.importer import ImportRequest

    cfg = _config(args)
    req = ImportRequest(inputs=tuple(args.inputs), output=_location(args.output, args), name=args.name,
                        format=args.format, chunk_size=args.chunk_size, compression=args.compression,
                        level=args.level, interleaved=args.interleaved, overwrite=args.overwrite,
                        collate=args.collate, exclusive_location=not args.allow_several,
                        read_group=args.read_group or {}, threads=args.threads)
    s = _run(args, req, None, "import", args.threads or cfg.import_.threads or None)
    skipped = s.skipped_secondary + s.skipped_supplementary
    _say(args, f"imported {s.records} records into {s.chunks} chunks: {s.location} ({s.name}"
               + (f", sort {s.sort}" if s.sort else "") + ")"
               + ("; mates collated (sorted by read name)" if getattr(s, "collated", False) else "")
               + (f"; skipped {skipped} secondary/supplementary records" if skipped else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from persona.apps.export import ExportRequest

    cfg = _config(args)
    dataset = _location(args.dataset, args)
    read_group = dict(args.read_group or {})
    for tag, value in (("ID", args.rg_id), ("SM", args.rg_sample), ("LB", args.rg_library),
                       ("PL", args.rg_platform)):
        if value:
            read_group[tag] = value
    req = ExportRequest(dataset=dataset, output=args.output, output2=args.output2, format=args.format,
                        name=args.name, level=args.level, read_group=read_group,
                        secondary=not args.no_secondary, secondary_seq=args.secondary_seq,
                        command_line=" ".join(["persona", *sys.argv[1:]]), reference=args.reference)
    import dataclasses

    regions = list(args.regions or []) + list(args.region or [])
    if args.output2 is not None and not _fastq_output(args):
        regions.insert(0, args.output2)  # `export ds out.bam chr1:1-100`: a region, not a second output
        req = dataclasses.replace(req, output2=None)
    if regions:
        req = dataclasses.replace(req, regions=tuple(regions))
    if args.regions_file:
        req = dataclasses.replace(req, regions_file=os.path.abspath(args.regions_file))
    s = _run(args, req, _num_records(dataset, args.name), "export", args.threads or cfg.export.threads or None)
    sec = f", {s.secondary_records} secondary" if s.secondary_records else ""
    where = "standard output" if s.path == "-" else " and ".join(s.paths)
    so = f", SO:{s.sort_order}" if s.sort_order else ""
    _say(args, f"exported {s.records} records{sec} ({s.chunks} chunks, {s.bytes_written:,} bytes{so}) "
               f"to {where} in {s.seconds:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from persona.apps.info import dataset_info, format_info

    info = dataset_info(_location(args.dataset, args), args.name)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from persona.agd.verify import verify_dataset

    report = verify_dataset(_location(args.dataset, args), deep=args.deep, name=args.name)
    print(report)
    return 0 if report.ok else 1


def cmd_repair_manifest(args: argparse.Namespace) -> int:
    from persona.agd.verify import repair_manifest

    manifest = repair_manifest(_location(args.location, args), name=args.name, reference=args.reference,
                               references_url=args.store)
    n = sum(r.last - r.first for r in manifest.records)
    _say(args, f"rebuilt manifest for {manifest.name}: {len(manifest.records)} chunks, {n} records, "
               f"columns {', '.join(manifest.columns)}")
    missing = manifest.extra.get("repaired", {}).get("unrecovered", [])
    if missing:
        print(f"persona: warning: could not rebuild: {'; '.join(missing)}", file=sys.stderr)
    return 0


#: a staged put older than this is a killed writer's (``persona gc`` removes it)
STALE_PUT_AGE = 3600.0


def cmd_gc(args: argparse.Namespace) -> int:
    from persona.agd.dataset import find_manifests
    from persona.agd.transaction import collect_garbage
    from persona.storage import open_store

    store = open_store(_location(args.location, args))
    from persona.apps.pipeline import STAGING_NAME

    from persona.agd.transaction import CLAIM_SUFFIX
    from persona.errors import DatasetBusyError

    keys = list(store.list())  # one listing (a remote store pages through it)
    manifests = find_manifests(store)
    names = [args.name] if args.name else [n for n in manifests if not STAGING_NAME.match(n)]
    # a writer killed before its first commit leaves its claim (and files) under a name with no manifest
    unborn = [] if args.name else sorted(
        {k[:-len(CLAIM_SUFFIX)] for k in keys if k.endswith(CLAIM_SUFFIX)} - set(manifests))
    unborn = [n for n in unborn if not STAGING_NAME.match(n) and not n.endswith(".owner")]
    # what puts killed mid-write left staged at the top level (no put lasts this long)
    stale = store.remove_temporaries("", min_age=STALE_PUT_AGE)
    for key in stale if args.verbose else []:
        print(f"partial write of {key}", file=sys.stderr)
    if not names and not unborn and not stale and not any(STAGING_NAME.match(k) for k in keys):
        raise PersonaError(f"no dataset in {store.url}; pass --name for the leftovers of one that never "
                           "committed")
    total = 0
    for name in names + unborn:
        if args.original_names and name in names:
            from persona.agd.transaction import original_names

            original_names(store, name)
        try:
            removed = collect_garbage(store, name)
        except DatasetBusyError:
            if name in names:
                raise
            continue  # a first write still running: not leftovers
        total += len(removed)
        for key in removed if args.verbose else []:
            print(key, file=sys.stderr)
    from persona.apps.pipeline import remove_orphan_staging

    staged = remove_orphan_staging(store)
    _say(args, f"removed {total} leftover chunk files of {', '.join(names + unborn) or 'no dataset'}"
               + (f"; removed {len(staged)} staging dataset(s) left by interrupted runs: {', '.join(staged)}"
                  if staged else "")
               + (f"; removed {len(stale)} partial write(s) older than {STALE_PUT_AGE // 60:.0f} min" if stale else ""))
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from persona.apps.copy import copy_dataset

    from persona.progress import Progress

    cols = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    with Progress(desc="cp", unit="B", enabled=False if args.quiet else None) as bar:
        s = copy_dataset(_location(args.source, args), _location(args.destination, args), name=args.name,
                         columns=cols, threads=args.threads or 4, overwrite=args.overwrite,
                         verify_destination=args.verify, progress=bar.update)
    mb = s.bytes_copied / 1e6
    _say(args, f"copied {s.name} ({s.chunks} chunks, {s.records} records, columns {','.join(s.columns)}) "
               f"to {s.destination}: {s.files_copied} files, {mb:.1f} MB in {s.seconds:.1f} s"
               + (f"; {s.files_skipped} files were already there (resumed)" if s.files_skipped else ""))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from persona.apps.copy import remove_dataset

    s = remove_dataset(_location(args.dataset, args), args.name)
    _say(args, f"removed dataset {s.name} from {s.location}: {len(s.deleted)} objects"
               + ("" if s.had_manifest else " (it had no manifest: leftovers of an unfinished write)"))
    return 0


def cmd_reference_add(args: argparse.Namespace) -> int:
    from persona.align.reference import add_reference

    cfg = _config(args)
    ref = add_reference(args.name, args.fasta, store_url=args.store or cfg.align.references_url,
                        aligner=args.aligner, preset=args.preset or cfg.align.preset,
                        overwrite=args.overwrite)
    _say(args, f"reference {ref.name}: {len(ref.contigs)} contigs, {sum(c.length for c in ref.contigs)} bp")
    return 0


def cmd_reference_list(args: argparse.Namespace) -> int:
    from persona.align.reference import list_references

    cfg = _config(args)
    for name in list_references(args.store or cfg.align.references_url):
        print(name)
    return 0


def _reference_name(value: str, args: argparse.Namespace) -> str:
    """A registered reference name, or a FASTA path (registered on first use under its file name)."""
    from persona.align.reference import add_reference, list_references

    cfg = _config(args)
    store = args.store or cfg.align.references_url
    if not os.path.isfile(value):
        return value
    base = os.path.basename(value)
    for ext in (".gz", ".fasta", ".fa", ".fna"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in base) or "reference"
    if name not in list_references(store):
        _say(args, f"registering reference {name} from {value}")
        add_reference(name, value, store_url=store, aligner=args.aligner or cfg.align.aligner,
                      preset=args.preset or cfg.align.preset)
    return name


def cmd_align(args: argparse.Namespace) -> int:
    from persona.apps.align import AlignRequest

    dataset = _location(args.dataset, args)
    paired = True if args.paired else False if args.single else None
    req = AlignRequest(dataset=dataset, reference=_reference_name(args.reference, args), name=args.name,
                       aligner=args.aligner, preset=args.preset, secondary=args.secondary,
                       work_item_reads=args.work_item_reads, references_url=args.store, paired=paired,
                       read_group=args.read_group or {})
    s = _run(args, req, _num_records(dataset, args.name), "align", args.threads or None)
    _say(args, f"aligned {s.name}: {s.records} records against {s.reference} in {s.seconds:.2f} s")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from persona.apps.stats import StatsRequest

    s = _runtime(args).run(StatsRequest(dataset=_location(args.dataset, args), name=args.name))
    print(json.dumps(s.stats.to_dict(), indent=2) if args.json else s.stats.format())
    return 0


def _fastq_output(args: argparse.Namespace) -> bool:
    from persona.apps.export import format_for

    try:
        return format_for(args.output, args.format) == "fastq"
    except Exception:  # noqa: BLE001 - the request reports a bad format itself
        return False


def _sorted_say(args: argparse.Namespace, s: Any, what: str) -> None:
    md = ""
    if s.metrics:
        md = f"; {s.duplicates} duplicates ({100 * s.metrics[0]['PERCENT_DUPLICATION']:.2f} % duplication)"
    _say(args, f"{what} {s.records} records by {s.order} into {s.name} at {s.location} "
               f"({s.chunks} chunks, {s.runs} runs{md}) in {s.seconds:.2f} s")


def cmd_sort(args: argparse.Namespace) -> int:
    from persona.apps.sort import SortRequest

    dataset = _location(args.dataset, args)
    req = SortRequest(dataset=dataset, output=_location(args.output, args) if args.output else None,
                      name=args.out_name, input_name=args.name, order=args.order, group_chunks=args.group_chunks,
                      merge_memory=args.merge_memory, overwrite=args.overwrite, threads=args.threads or None,
                      markdup=args.markdup, metrics=args.metrics, window=args.window)
    s = _run(args, req, _num_records(dataset, args.name), "sort", args.threads or None)
    _sorted_say(args, s, "sorted")
    return 0


class UsageError(PersonaError):
    """Options that do not go together: exit status 2, as argparse's own usage errors."""


def _reads_files(values: Sequence[str]) -> bool:
    """Are the positional inputs read files (FASTQ, SAM/BAM, ``-``) rather than one dataset location?"""
    import os

    if len(values) != 1:
        return True
    v = values[0]
    return v == "-" or (os.path.isfile(v) and not v.endswith(".json"))


def cmd_align_sort(args: argparse.Namespace) -> int:
    from persona.apps.align_sort import AlignSortRequest

    if _reads_files(args.dataset):
        return _align_sort_reads(args)
    for opt, value in (("--chunk-size", args.chunk_size), ("--interleaved", args.interleaved),
                       ("--allow-several", args.allow_several)):
        if value:
            raise UsageError(f"{opt} applies to read files (FASTQ, SAM/BAM) given to align-sort, not to a dataset")
    dataset = _location(args.dataset[0], args)
    paired = True if args.paired else False if args.single else None
    req = AlignSortRequest(dataset=dataset, output=_location(args.output, args) if args.output else None,
                           name=args.out_name, input_name=args.name, group_chunks=args.group_chunks,
                           merge_memory=args.merge_memory, overwrite=args.overwrite, threads=args.threads or None,
                           markdup=args.markdup, metrics=args.metrics, window=args.window,
                           reference=_reference_name(args.reference, args), aligner=args.aligner,
                           preset=args.preset, secondary=args.secondary, work_item_reads=args.work_item_reads,
                           references_url=args.store, paired=paired, read_group=args.read_group or {})
    s = _run(args, req, _num_records(dataset, args.name), "align-sort", args.threads or None)
    _sorted_say(args, s, f"aligned against {s.reference} and sorted")
    if args.bam:
        _export_after(args, s.location, s.name)
    return 0


def _export_after(args: argparse.Namespace, location: str, name: str) -> Any:
    from persona.apps.export import ExportRequest

    req = ExportRequest(dataset=location, name=name, output=args.bam, threads=args.threads or None,
                        command_line=" ".join(["persona", *sys.argv[1:]]))
    s = _run(args, req, None, "export", args.threads or None)
    _say(args, f"exported {s.records} records to {' and '.join(s.paths)} in {s.seconds:.2f} s")
    return s


def _align_sort_reads(args: argparse.Namespace) -> int:
    """``persona align-sort R1.fq.gz R2.fq.gz -o LOC -r REF [--markdup] [--bam out.bam]``: import, align-sort
    and export in this one process (:mod:`persona.apps.pipeline`)."""
    from persona.apps.pipeline import align_sort_reads

    if isinstance(getattr(args, "_rt", None), _CaptureRuntime):
        raise UsageError("persona submit align-sort takes a dataset; for read files submit the chain: "
                         "persona submit import R1 R2 -o LOC + align-sort LOC -r REF ... + export LOC out.bam")
    if not args.output:
        raise UsageError("align-sort of read files needs -o LOCATION for the sorted dataset")
    if args.name:
        raise UsageError("-n names a dataset in a location; for read files name the sorted dataset with --out-name")
    if args.paired or args.single:
        raise UsageError("--paired/--single apply to a dataset; read files say it themselves (two FASTQs: pairs; "
                         "one: single-end, or --interleaved)")
    rt = _runtime(args, args.threads or None)
    output = _location(args.output, args)
    asopts: dict[str, Any] = {k: v for k, v in (
        ("group_chunks", args.group_chunks), ("merge_memory", args.merge_memory), ("threads", args.threads or None),
        ("window", args.window), ("aligner", args.aligner), ("preset", args.preset), ("secondary", args.secondary),
        ("work_item_reads", args.work_item_reads), ("references_url", args.store)) if v}
    imopts: dict[str, Any] = {k: v for k, v in (("chunk_size", args.chunk_size), ("interleaved", args.interleaved),
                                                ("threads", args.threads or None)) if v}
    with _progress(args, None, "align-sort") as bar:
        r = align_sort_reads(tuple(args.dataset), output, _reference_name(args.reference, args), name=args.out_name,
                             markdup=args.markdup, metrics=args.metrics, overwrite=args.overwrite,
                             exclusive_location=not args.allow_several, read_group=args.read_group or {},
                             import_options=imopts, align_sort_options=asopts, runtime=rt,
                             progress=lambda step, n: bar.update(n) if step == "align-sort" else None)
    _sorted_say(args, r.sorted, f"imported {r.imported.records} records, aligned them against {r.sorted.reference} "
                                "and sorted")
    if args.bam:
        _export_after(args, r.sorted.location, r.sorted.name)
    return 0


def cmd_markdup(args: argparse.Namespace) -> int:
    from persona.apps.markdup import MarkdupRequest

    dataset = _location(args.dataset, args)
    req = MarkdupRequest(dataset=dataset, name=args.name, metrics=args.metrics, threads=args.threads or None,
                         window=args.window, remove=args.remove,
                         output=_location(args.output, args) if args.output else None, out_name=args.out_name)
    s = _run(args, req, _num_records(dataset, args.name), "markdup", args.threads or None)
    pct = s.metrics[0]["PERCENT_DUPLICATION"] if s.metrics else 0.0
    if args.remove:
        _say(args, f"left {s.duplicates} duplicates of {s.records} records out of {s.name} at {s.location} "
                   f"({100 * pct:.2f} % duplication) in {s.seconds:.2f} s")
    else:
        _say(args, f"marked {s.duplicates} of {s.records} records as duplicates in {s.name} "
                   f"({100 * pct:.2f} % duplication) in {s.seconds:.2f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from persona.apps.demo import run_demo

    return run_demo(workdir=args.workdir, runtime=_runtime(args))


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from persona.bench import run as run_bench

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    only = [n.strip().removeprefix("bench_").removesuffix(".py") for n in (args.only or "").split(",") if n.strip()]
    paths = run_bench(Path(args.out), render_only=Path(args.render) if args.render else None, quick=args.quick,
                      only=only or None, reps=args.reps, cache=Path(args.cache) if args.cache else None,
                      bench_dir=Path(args.bench_dir) if args.bench_dir else None, timeout=args.timeout,
                      install=not args.no_install, progress=say)
    say(f"report: {paths['html']} and {paths['md']} ({len(paths) - 2} figures)")
    return 0


# -- the service: persona serve / submit / status / cancel / watch -------------------------------
#: the commands `persona submit KIND ...` takes (their arguments are the command's own)
SUBMIT_KINDS = ("import", "align", "export", "sort", "align-sort", "markdup", "stats")


def cmd_serve(args: argparse.Namespace) -> int:
    from persona.service.server import serve
    from persona.service.triggers import TriggerSpec, parse_kinds

    metrics = args.metrics_listen
    kw: dict[str, Any] = {} if metrics is None else {"metrics_listen": None if metrics in ("", "none") else metrics}
    cfg = _config(args)
    tls = {f"service.{k}": getattr(args, k) for k in ("tls_cert", "tls_key") if getattr(args, k)}
    if tls:
        cfg = cfg.with_overrides(tls)
    triggers = []
    # each --watch option has an environment twin (systemd units): PERSONA_WATCH (comma-separated), ...
    watch = args.watch or [p.strip() for p in os.environ.get("PERSONA_WATCH", "").split(",") if p.strip()]
    then_text = args.then or os.environ.get("PERSONA_THEN")
    if watch:
        if not then_text:
            raise PersonaError("persona serve --watch needs --then KIND[,KIND...] (what to run on new inputs)")
        then = parse_kinds(then_text)
        output = args.output or os.environ.get("PERSONA_WATCH_OUTPUT") or ""
        reference = args.reference or os.environ.get("PERSONA_WATCH_REFERENCE")
        poll = args.poll if args.poll is not None else float(os.environ.get("PERSONA_WATCH_POLL") or 10.0)
        for prefix in watch:
            triggers.append(TriggerSpec(watch=prefix, then=then, output=output, reference=reference,
                                        sort_order=args.order, export_format=args.export_format, poll_seconds=poll))
    elif then_text:
        raise PersonaError("persona serve --then needs --watch PREFIX")
    return serve(cfg, listen=args.listen, db_path=args.db, roots=args.roots, threads=args.threads or None,
                 address_file=args.address_file, triggers=triggers, **kw)


def cmd_coordinator(args: argparse.Namespace) -> int:
    from persona.service.coordinator import run_coordinator

    return run_coordinator(_config(args), listen=args.listen, worker_listen=args.worker_listen, db_path=args.db,
                           roots=args.roots, address_file=args.address_file)


def cmd_worker(args: argparse.Namespace) -> int:
    from persona.service.worker import run_worker

    coordinator = args.coordinator or os.environ.get("PERSONA_COORDINATOR")
    if not coordinator:
        raise PersonaError("persona worker needs --coordinator HOST:PORT (the coordinator's worker API; "
                           "env PERSONA_COORDINATOR)")
    return run_worker(_config(args), coordinator=coordinator, token=args.token, threads=args.threads or None,
                      credits=args.credits, metrics_listen=args.metrics_listen)


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


class _CaptureRuntime:
    """Stands in for the Runtime while a command builds its request: takes the request and stops."""

    def run(self, request: Any, progress: Any = None) -> Any:
        raise _Captured(request)

    def stop(self) -> None:
        pass


def _submit_request(args: argparse.Namespace, words: list[str]) -> Any:
    """The request ``persona WORDS...`` would run, built by that command's own code; local paths
    made absolute (the service resolves them against its roots otherwise)."""
    from persona.service.paths import PATH_FIELDS

    if not words or words[0] not in SUBMIT_KINDS:
        raise PersonaError(f"persona submit: expected one of {', '.join(SUBMIT_KINDS)}, got "
                           f"{words[0] if words else 'nothing'!r}")
    sub = build_parser().parse_args(words)
    sub._cfg, sub._rt = _config(args), _CaptureRuntime()
    fasta = None
    if words[0] == "align" and os.path.isfile(sub.reference):
        fasta, sub.reference = os.path.abspath(sub.reference), "\0"  # the service registers it, not us
    try:
        sub.func(sub)
    except _Captured as c:
        request = c.request
    else:  # pragma: no cover - every submit kind runs a request
        raise PersonaError(f"persona submit {words[0]}: no request built")
    if fasta is not None:
        request.reference = fasta

    def absolute(v: Any) -> Any:
        return os.path.abspath(v) if isinstance(v, str) and v != "-" and "://" not in v else v

    for key in PATH_FIELDS:
        v = getattr(request, key, None)
        if isinstance(v, (list, tuple)):
            setattr(request, key, type(v)(absolute(x) for x in v))
        elif v is not None:
            setattr(request, key, absolute(v))
    return request


def _client(args: argparse.Namespace) -> Any:
    from persona.service.client import Client

    return Client(args.address, args.token, config=_config(args), tls_ca=getattr(args, "tls_ca", None))


def _follow(args: argparse.Namespace, client: Any, request_id: str) -> int:
    """Progress on standard error until the request finished; 0 when done."""
    last = None
    final: dict[str, Any] | None = None
    for st in client.watch(request_id, timeout=args.timeout):
        final = st
        if args.json:
            print(json.dumps(st), flush=True)
            continue
        step = st["steps"][st["step"]]["kind"] if st["steps"] else "?"
        key = (st["state"], st["step"], st["feeds_done"])
        if key != last and not args.quiet:
            print(f"{request_id} {st['state']}: step {st['step'] + 1}/{len(st['steps'])} {step}, "
                  f"{st['feeds_done']} feeds, {st['records_done']} records ({st['rate']:.0f}/s)", file=sys.stderr)
            last = key
    if final is None or final["state"] not in ("done", "failed", "cancelled"):
        raise PersonaError(f"request {request_id}: the service stopped before it finished (persona watch "
                           f"{request_id} follows it after a restart)")
    if final["state"] == "done":
        _say(args, f"request {request_id} done: {final['records_total_done']} records in "
                   f"{final['finished_at'] - final['submitted_at']:.2f} s")
        return 0
    print(f"persona: request {request_id} {final['state']}: {final['error']}", file=sys.stderr)
    return 1


def _split_chain(words: list[str]) -> list[list[str]]:
    chain: list[list[str]] = [[]]
    for w in words:
        if w == "+":
            chain.append([])
        else:
            chain[-1].append(w)
    return chain


def cmd_submit(args: argparse.Namespace) -> int:
    requests = [_submit_request(args, words) for words in _split_chain(args.request)]
    with _client(args) as c:
        rid = c.submit(*requests, label=args.label or "", idempotency_key=args.idempotency_key or "")
        print(rid, flush=True)
        return 0 if args.detach else _follow(args, c, rid)


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _follow(args, c, args.request_id)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if not c.cancel(args.request_id):
            st = c.get(args.request_id)
            _say(args, f"request {args.request_id} had already finished ({st['state']})")
            return 0
        st = c.wait(args.request_id, timeout=args.timeout)
        _say(args, f"request {args.request_id} {st['state']}")
        return 0 if st["state"] == "cancelled" else 1


def cmd_status(args: argparse.Namespace) -> int:
    import time

    with _client(args) as c:
        if args.request_id:
            st = c.get(args.request_id)
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                kinds = "+".join(s["kind"] for s in st["steps"])
                print(f"{st['id']}  {st['state']}  {kinds}  step {st['step'] + 1}/{len(st['steps'])}  "
                      f"{st['records_total_done']} records" + (f"  error: {st['error']}" if st["error"] else ""))
            return 0
        cluster = c.cluster_status()
        rows, _ = c.list(states=args.state or (), kind=args.kind or "", page_size=args.limit)
        if args.json:
            print(json.dumps({"cluster": cluster, "requests": rows}, indent=2))
            return 0
        print(f"persona {cluster['version']} at {c.address}: {cluster['state']}, {cluster['running']} running, "
              f"{cluster['queued']} queued")
        for w in cluster["workers"]:
            print(f"  worker {w['worker_id']}: {w['state']}, {w['threads']} threads, "
                  f"{w['running_requests']} steps running")
        for st in rows:
            kinds = "+".join(s["kind"] for s in st["steps"])
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["submitted_at"]))
            print(f"{st['id']}  {when}  {st['state']:<9}  {kinds}  {st['records_total_done']} records"
                  + (f"  {st['label']}" if st["label"] else ""))
        return 0


# -- parser ---------------------------------------------------------------------------
EXAMPLES = {
    "import": """examples:
  persona import reads_R1.fq.gz reads_R2.fq.gz -o /data/agd            paired FASTQ
  persona import sample.bam -o /data/agd -n sample                     SAM/BAM (pairing, RG kept)
  zcat reads.fq.gz | persona import - -f fastq -o /data/agd -n reads  standard input
  persona import inter.fq --interleaved -o /data/agd -R '@RG\\tID:r1\\tSM:NA12878\\tPL:ILLUMINA'""",
    "export": """examples:
  persona export /data/agd/yeast out.bam                 BAM (format from the suffix)
  persona export /data/agd/yeast - | samtools sort -o s.bam -    to a pipe (SAM unless -f bam)
  persona export /data/agd/yeast - -f bam | samtools view -c -
  persona export /data/agd/yeast_sorted r.bam chr1:1000-2000 chr2   regions of a coordinate-sorted dataset
  persona export /data/agd/yeast r1.fq.gz r2.fq.gz      paired FASTQ""",
    "align": """examples:
  persona reference add sacCer3 sacCer3.fa
  persona align /data/agd/yeast -r sacCer3 -t 8
  persona align /data/agd/yeast -r sacCer3.fa          a FASTA path registers it on first use""",
    "info": """examples:
  persona info /data/agd/yeast
  persona info /data/agd --name yeast --json""",
    "verify": """examples:
  persona verify /data/agd/yeast           checksums and headers of every chunk
  persona verify /data/agd/yeast --deep    also decode every record""",
    "stats": """examples:
  persona stats /data/agd/yeast            like samtools flagstat
  persona stats /data/agd/yeast --json""",
    "gc": """examples:
  persona gc /data/agd                      remove leftovers of interrupted writes
  persona gc /data/agd --name yeast -v""",
    "cp": """examples:
  persona cp /data/agd/yeast 'ceph://persona/yeast?conf=/etc/ceph/ceph.conf&id=persona'
  persona cp ceph://persona/yeast s3://cold/yeast --columns base,qual -t 8
  persona cp s3://cold/yeast /data/agd/yeast2      (rerun after an interruption: it resumes)""",
    "rm": """examples:
  persona rm s3://cold/yeast
  persona rm /data/agd --name yeast""",
    "repair-manifest": """examples:
  persona repair-manifest /data/agd --name yeast""",
    "reference": """examples:
  persona reference add sacCer3 sacCer3.fa
  persona reference list""",
    "demo": """examples:
  persona demo
  persona demo --workdir /tmp/demo""",
    "sort": """examples:
  persona sort /data/agd/yeast                           coordinate order into yeast_sorted
  persona sort /data/agd/yeast --order queryname -o /data/agd/byname
  persona sort /data/agd/yeast --markdup -M dup_metrics.txt   mark duplicates during the merge""",
    "align-sort": """examples:
  persona import R1.fq.gz R2.fq.gz -o /data/agd -n s1 -R '@RG\\tID:r1\\tSM:s1\\tLB:lib1'
  persona align-sort /data/agd -n s1 -r sacCer3 --markdup -M dup_metrics.txt
  persona export /data/agd s1.bam -n s1_sorted             sorted, duplicate-marked, indexed BAM""",
    "markdup": """examples:
  persona markdup /data/agd/yeast_sorted -M dup_metrics.txt       flag 0x400 in place
  persona markdup /data/agd/yeast_sorted --remove                 a new dataset without duplicates""",
    "bench": """examples:
  persona bench --quick --out bench/report
  persona bench --only align,sort --reps 3
  persona bench --render bench/report/results.json --out /tmp/report""",
    "config": """examples:
  persona config show
  PERSONA_ALIGN__THREADS=8 persona config show""",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="persona", description=__doc__.splitlines()[0],
        epilog="examples:\n  persona demo\n  persona import R1.fq.gz R2.fq.gz -o ds && persona align ds -r ref "
               "&& persona export ds out.bam\n  persona import R1.fq.gz R2.fq.gz -o ds && persona align-sort ds -r ref "
               "--markdup -o sorted && persona export sorted out.bam\n\n'persona COMMAND --help' shows each "
               "command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_VersionAction, help="print the version and exit")
    p.add_argument("--config", default=os.environ.get("PERSONA_CONFIG"),
                   help="YAML config file layered over the defaults (env PERSONA_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no summary or progress on standard error")
    common.add_argument("-v", "--verbose", action="store_true", help="more detail on standard error (debug log)")

    def add(name: str, fn: Handler, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common], epilog=EXAMPLES.get(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=fn)
        return sp

    def threads(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("-t", "-@", "--threads", dest="threads", type=_non_negative, default=0,
                        help=f"{what} (0 = the cores this process may use: CPU affinity and cgroup quota)")

    add("version", cmd_version, "print the version")

    cfg = add("config", lambda a: (cfg.print_help(), 2)[1], "configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    cfg_sub.add_parser("show", help="print the effective configuration").set_defaults(func=cmd_config_show)

    sp = add("import", cmd_import, "import FASTQ(.gz) (one file, two for pairs, or interleaved) or SAM/BAM into AGD")
    sp.add_argument("inputs", nargs="+", help="R1 [R2] FASTQ(.gz), or one SAM/BAM; - reads standard input")
    sp.add_argument("-o", "--output", required=True, help="dataset location (directory or store URL)")
    sp.add_argument("-n", "--name", help="dataset name (default: from the input file name)")
    sp.add_argument("-f", "--format", choices=["fastq", "sam", "bam"],
                    help="input format (default: from the name or content; needed for -)")
    sp.add_argument("-c", "--chunk-size", type=_positive, help="records (pairs) per chunk (default agd.chunk_size)")
    sp.add_argument("--compression", choices=["zstd", "gzip", "none"],
                    help="chunk compression; gzip for datasets the original Persona must read")
    sp.add_argument("--level", type=_level, help="compression level")
    sp.add_argument("--interleaved", action="store_true", help="one FASTQ holding both mates, alternating")
    sp.add_argument("--collate", action=argparse.BooleanOptionalAction, default=None,
                    help="SAM/BAM of pairs: sort by read name so mates sit side by side and align as pairs "
                         "(default: when the header says SO:coordinate and the reads are paired)")
    sp.add_argument("-R", "--read-group", type=parse_read_group,
                    help="read group line, e.g. '@RG\\tID:run1\\tSM:NA12878\\tPL:ILLUMINA'")
    sp.add_argument("--overwrite", action="store_true", help="replace a dataset of the same name")
    sp.add_argument("--allow-several", action="store_true",
                    help="allow a second dataset in a location that already holds one (then pass --name)")
    threads(sp, "threads")

    sp = add("export", cmd_export, "export a dataset to BAM, SAM or FASTQ")
    sp.add_argument("dataset", help="dataset location or manifest path")
    sp.add_argument("output", help="output file (.bam, .sam, .cram, .fastq[.gz]; R1 for pairs); - is standard output")
    sp.add_argument("output2", nargs="?", help="FASTQ output for read 2 of pairs; for SAM/BAM/CRAM the first REGION")
    sp.add_argument("regions", nargs="*", metavar="REGION",
                    help="coordinate-sorted SAM/BAM/CRAM: only records overlapping these regions (samtools syntax: "
                         "chr1, chr1:1000-2000; 1-based, inclusive; each record once, as samtools view -M), "
                         "reading only the chunks that overlap")
    sp.add_argument("--region", action="append", help="a region (repeatable; same as a REGION argument)")
    sp.add_argument("-L", "--regions-file", metavar="BED",
                    help="coordinate-sorted SAM/BAM/CRAM: only records overlapping the intervals of this BED file "
                         "(and a REGION, where given), as samtools view -L")
    sp.add_argument("-n", "--name", help="dataset name, where the location holds several")
    sp.add_argument("-f", "--format", choices=["bam", "sam", "fastq", "cram"],
                    help="default: from the suffix (SAM for -)")
    sp.add_argument("--reference", help="CRAM: the reference FASTA (default: the registered reference the "
                                        "dataset was aligned to)")
    sp.add_argument("--level", type=_non_negative, help="BGZF deflate level 0-9 (default export.bgzf_level)")
    threads(sp, "threads")
    sp.add_argument("-R", "--read-group", type=parse_read_group,
                    help="read group line, e.g. '@RG\\tID:run1\\tSM:NA12878\\tPL:ILLUMINA'")
    sp.add_argument("--rg-id", help="@RG ID (default: the dataset name)")
    sp.add_argument("--rg-sample", help="@RG SM (default: the dataset name)")
    sp.add_argument("--rg-library", help="@RG LB")
    sp.add_argument("--rg-platform", help="@RG PL, e.g. ILLUMINA")
    sp.add_argument("--no-secondary", action="store_true",
                    help="SAM/BAM: leave out the secondary<N> columns' alignments (default: write them)")
    sp.add_argument("--secondary-seq", action="store_true",
                    help="SAM/BAM: give secondary records SEQ and QUAL (default '*', as minimap2 writes them)")

    sp = add("info", cmd_info, "show a dataset's columns, records, chunks, sizes, sort order and provenance")
    sp.add_argument("dataset")
    sp.add_argument("-n", "--name", help="dataset name, where the location holds several")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("verify", cmd_verify, "check every chunk of a dataset")
    sp.add_argument("dataset")
    sp.add_argument("-n", "--name", help="dataset name, where the location holds several")
    sp.add_argument("--deep", action="store_true", help="also decode every record of every column")

    sp = add("repair-manifest", cmd_repair_manifest, "rebuild a lost manifest from the chunk headers")
    sp.add_argument("location", help="directory or store URL holding the chunks")
    sp.add_argument("-n", "--name", help="dataset name (needed when chunks of several datasets share the location)")
    sp.add_argument("-r", "--reference", help="reference the dataset was aligned against (rebuilds reference_contigs "
                                              "when the manifest is lost)")
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")

    sp = add("gc", cmd_gc, "remove the chunk files of interrupted or superseded writes")
    sp.add_argument("location", help="directory or store URL")
    sp.add_argument("-n", "--name", help="only this dataset")
    sp.add_argument("--original-names", action="store_true",
                    help="also give every chunk file its original name <name>_<first>.<column> (the layout the "
                         "original Persona reads; object stores keep rewritten columns under attempt keys)")

    sp = add("cp", cmd_cp, "copy a dataset between stores (file, ceph://, s3://), resuming an interrupted copy")
    sp.add_argument("source", help="dataset location (directory or store URL) or manifest path")
    sp.add_argument("destination", help="directory or store URL to copy it into")
    sp.add_argument("-n", "--name", help="dataset name, where the source location holds several")
    sp.add_argument("--columns", help="comma-separated columns to copy (default all), e.g. base,qual")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace a dataset of the same name at the destination (kept intact until the commit)")
    sp.add_argument("--verify", action="store_true",
                    help="also read every copied file back from the destination and check its checksum")
    sp.add_argument("-t", "--threads", type=_non_negative, default=0, help="files in flight (0 = 4)")

    sp = add("rm", cmd_rm, "delete a dataset: its manifest first, then its chunk files")
    sp.add_argument("dataset", help="dataset location (directory or store URL)")
    sp.add_argument("-n", "--name", help="dataset name, where the location holds several (or the name of an "
                                         "unfinished write's leftovers)")

    ref = add("reference", lambda a: (ref.print_help(), 2)[1], "manage reference genomes")
    ref_sub = ref.add_subparsers(dest="reference_command", metavar="SUBCOMMAND")
    sp = ref_sub.add_parser("add", help="index a FASTA for an aligner and store it", parents=[common])
    sp.set_defaults(func=cmd_reference_add)
    sp.add_argument("name")
    sp.add_argument("fasta")
    sp.add_argument("--aligner", default="minimap2")
    sp.add_argument("--preset", help="aligner preset to index for (default: align.preset, 'sr'; "
                                     "snap: 'sr' picks the seed length by genome size, s16..s32 fix it)")
    sp.add_argument("--overwrite", action="store_true", help="replace a reference of the same name")
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")
    sp = ref_sub.add_parser("list", help="list stored references", parents=[common])
    sp.set_defaults(func=cmd_reference_list)
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")

    sp = add("align", cmd_align, "align a dataset's reads; adds the results column")
    sp.add_argument("dataset")
    sp.add_argument("-r", "--reference", required=True,
                    help="reference name (see 'persona reference list') or a FASTA path")
    sp.add_argument("-n", "--name", help="dataset name, where the location holds several")
    sp.add_argument("--aligner", choices=["minimap2", "mappy", "minibwa", "snap"],
                    help="aligner backend (default: align.aligner)")
    threads(sp, "aligner threads")
    sp.add_argument("--work-item-reads", type=_positive, help="reads per aligner work item")
    sp.add_argument("--secondary", type=_non_negative, default=0, help="secondary alignment columns to write")
    sp.add_argument("--preset", help="aligner preset (default: align.preset, 'sr')")
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")
    sp.add_argument("-R", "--read-group", type=parse_read_group,
                    help="read group line recorded with the alignment, e.g. '@RG\\tID:run1\\tSM:NA12878\\tPL:ILLUMINA'")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--paired", action="store_true", help="treat the reads as interleaved pairs")
    g.add_argument("--single", action="store_true", help="treat the reads as single-end")

    sp = add("stats", cmd_stats, "alignment summary of a dataset (like samtools flagstat)")
    sp.add_argument("dataset")
    sp.add_argument("-n", "--name", help="dataset name, where the location holds several")
    sp.add_argument("--json", action="store_true")

    sp = add("sort", cmd_sort, "sort a dataset by coordinate or read name into a new dataset")
    sp.add_argument("dataset", help="dataset location or manifest path")
    sp.add_argument("-o", "--output", help="location of the sorted dataset (default: the input's)")
    sp.add_argument("-n", "--name", help="input dataset name, where the location holds several")
    sp.add_argument("--out-name", help="name of the sorted dataset (default: the input's name, or "
                                       "<name>_sorted in the input's location)")
    sp.add_argument("--order", choices=["coordinate", "queryname"], default="coordinate")
    sp.add_argument("--group-chunks", type=_positive, help="chunks sorted together into one run (default 4)")
    sp.add_argument("--merge-memory", type=_positive, help="bytes the merge may buffer (default 256 MiB)")
    sp.add_argument("--overwrite", action="store_true", help="replace a dataset of the same name")
    sp.add_argument("--markdup", action="store_true",
                    help="mark duplicates during the merge (coordinate order; Picard MarkDuplicates rules)")
    sp.add_argument("-M", "--metrics", help="with --markdup: Picard-format duplication metrics file")
    sp.add_argument("--window", type=_non_negative, help="with --markdup: bases past a position before its "
                                                         "duplicates are decided (default markdup.window)")
    threads(sp, "threads")

    sp = add("align-sort", cmd_align_sort,
             "align a dataset's reads and sort them by coordinate in one pipeline, into a new dataset")
    sp.add_argument("dataset", nargs="+", metavar="INPUT",
                    help="dataset location or manifest path (unaligned reads, e.g. an imported FASTQ); or read "
                         "files (a FASTQ pair, one FASTQ, an unaligned SAM/BAM, -): imported first, in this process, "
                         "then aligned and sorted into -o")
    sp.add_argument("-r", "--reference", required=True,
                    help="reference name (see 'persona reference list') or a FASTA path")
    sp.add_argument("-o", "--output", help="location of the sorted dataset (default: the input's)")
    sp.add_argument("-n", "--name", help="input dataset name, where the location holds several")
    sp.add_argument("--out-name", help="name of the sorted dataset (default: the input's name, or "
                                       "<name>_sorted in the input's location)")
    sp.add_argument("--markdup", action="store_true",
                    help="mark duplicates during the merge (Picard MarkDuplicates rules)")
    sp.add_argument("-M", "--metrics", help="with --markdup: Picard-format duplication metrics file")
    sp.add_argument("--window", type=_non_negative, help="with --markdup: bases past a position before its "
                                                         "duplicates are decided (default markdup.window)")
    sp.add_argument("--aligner", choices=["minimap2", "mappy", "minibwa", "snap"],
                    help="aligner backend (default: align.aligner)")
    sp.add_argument("--preset", help="aligner preset (default: align.preset, 'sr')")
    sp.add_argument("--secondary", type=_non_negative, default=0, help="secondary alignment columns to write")
    sp.add_argument("--work-item-reads", type=_positive, help="reads per aligner work item")
    sp.add_argument("--store", help="reference store URL (default: align.references_url)")
    sp.add_argument("-R", "--read-group", type=parse_read_group,
                    help="read group line recorded with the alignment, e.g. '@RG\\tID:run1\\tSM:NA12878\\tLB:lib1'")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--paired", action="store_true", help="treat the reads as interleaved pairs")
    g.add_argument("--single", action="store_true", help="treat the reads as single-end")
    sp.add_argument("--group-chunks", type=_positive, help="chunks aligned and sorted together into one run "
                                                            "(default sort.group_chunks)")
    sp.add_argument("--merge-memory", type=_positive, help="bytes the merge may buffer (default sort.merge_memory)")
    sp.add_argument("--overwrite", action="store_true", help="replace a dataset of the same name")
    sp.add_argument("--bam", metavar="PATH", help="then export the sorted dataset here (BAM, SAM or CRAM by the "
                                                  "name; a BAM gets its index), in the same process")
    sp.add_argument("-c", "--chunk-size", type=_positive, help="read files: records (pairs) per chunk "
                                                               "(default agd.chunk_size)")
    sp.add_argument("--interleaved", action="store_true", help="read files: one FASTQ holding both mates")
    sp.add_argument("--allow-several", action="store_true",
                    help="read files: allow -o to hold other datasets (as import's --allow-several)")
    threads(sp, "threads")

    sp = add("markdup", cmd_markdup, "mark duplicate reads (Picard MarkDuplicates rules), flag 0x400 in results")
    sp.add_argument("dataset", help="dataset location or manifest path")
    sp.add_argument("-n", "--name", help="dataset name, where the location holds several")
    sp.add_argument("-M", "--metrics", help="write Picard-format duplication metrics to this file")
    sp.add_argument("--window", type=_non_negative,
                    help="coordinate-sorted input: bases past a position before its duplicates are decided "
                         "(default 10000; 0: decide at the end, memory grows with the dataset)")
    sp.add_argument("--remove", action="store_true",
                    help="Picard's REMOVE_DUPLICATES: write a new dataset without the duplicates (the input stays "
                         "as it is); see -o and --out-name")
    sp.add_argument("-o", "--output", help="with --remove: location of the new dataset (default: the input's)")
    sp.add_argument("--out-name", help="with --remove: its name (default <name>_dedup in the input's location)")
    threads(sp, "threads")

    sp = add("demo", cmd_demo,
             "the embedded default job on the bundled sample: import, align-sort --markdup, export BAM, summary")
    sp.add_argument("--workdir", help="where to put the outputs (default: a new temporary directory)")

    sp = add("bench", cmd_bench, "run the benchmark suite of bench/ and write a report with plots")
    sp.add_argument("--quick", action="store_true", help="each benchmark's --quick run (minutes, not hours)")
    sp.add_argument("--out", default="persona-bench-report", help="report folder (default ./persona-bench-report)")
    sp.add_argument("--only", help="comma-separated benchmark names (align,sort,...; default: all)")
    sp.add_argument("--reps", type=_positive, default=1, help="repetitions of each benchmark (medians, range)")
    sp.add_argument("--cache", help="simulated inputs cache (default ~/.cache/persona/bench)")
    sp.add_argument("--timeout", type=float, help="seconds per benchmark run (default 900 quick, 7200 full)")
    sp.add_argument("--bench-dir", help="the bench/ folder of a checkout (default: this checkout's)")
    sp.add_argument("--no-install", action="store_true", help="do not apt-get install missing reference tools")
    sp.add_argument("--render", metavar="RESULTS_JSON", help="only render the report of an earlier results.json")

    def service_client(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--address", help="the service's address HOST:PORT (default: service.listen)")
        sp.add_argument("--token", help="bearer token (default: service.token, else the token file persona serve "
                                        "wrote beside service.db_path)")
        sp.add_argument("--tls-ca", help="connect with TLS, checking the service's certificate against this CA "
                                         "certificate (PEM; default: service.tls_ca; neither: plain TCP)")

    sp = add("serve", cmd_serve, "run the service: the gRPC API, the request table and one worker in this process")
    sp.add_argument("--listen", help="HOST:PORT of the gRPC API (default: service.listen; port 0: a free one)")
    sp.add_argument("--metrics-listen", help="HOST:PORT of the Prometheus /metrics ('none': off; "
                                             "default: service.metrics_listen)")
    sp.add_argument("--db", help="the request table (SQLite; default: service.db_path)")
    sp.add_argument("--roots", help="comma-separated directories and store URLs request paths must lie under "
                                    "(default: service.roots, else the current directory)")
    sp.add_argument("--address-file", help="write the address listened on to this file once serving")
    sp.add_argument("--tls-cert", help="serve the API over TLS with this certificate chain (PEM; default: "
                                       "service.tls_cert)")
    sp.add_argument("--tls-key", help="the private key of --tls-cert (PEM; default: service.tls_key)")
    sp.add_argument("--watch", action="append", metavar="STORE_PREFIX",
                    help="submit a request when a new FASTQ pair (R1/R2 names) or AGD dataset appears under this "
                         "directory or store URL (repeatable; each input runs once, across restarts too; env "
                         "PERSONA_WATCH, comma-separated; likewise PERSONA_THEN, PERSONA_WATCH_OUTPUT, "
                         "PERSONA_WATCH_REFERENCE, PERSONA_WATCH_POLL)")
    sp.add_argument("--then", metavar="KIND[,KIND...]",
                    help="what --watch runs: kinds from import, align, sort, markdup, export, stats (a FASTQ pair is "
                         "imported first)")
    sp.add_argument("--output", help="--watch: where the triggered requests write their datasets and exports")
    sp.add_argument("-r", "--reference", help="--watch: the reference align uses (a registered name or a FASTA)")
    sp.add_argument("--order", choices=["coordinate", "queryname"], default="coordinate",
                    help="--watch: the sort order (default coordinate)")
    sp.add_argument("--export-format", choices=["bam", "sam", "cram"], default="bam",
                    help="--watch: the export format (default bam)")
    sp.add_argument("--poll", type=float, help="--watch: seconds between listings (default 10)")
    threads(sp, "aligner threads")

    sp = add("coordinator", cmd_coordinator, "run the cluster coordinator: the gRPC API, the request table and the "
                                             "global gates that hand partitions to workers")
    sp.add_argument("--listen", help="HOST:PORT of the client API (default: service.listen)")
    sp.add_argument("--worker-listen", help="HOST:PORT of the worker API (default: service.worker_listen)")
    sp.add_argument("--db", help="the request table (SQLite; default: service.db_path)")
    sp.add_argument("--roots", help="comma-separated directories and store URLs request paths must lie under")
    sp.add_argument("--address-file", help="write the client and worker API addresses (two lines) once serving")

    sp = add("worker", cmd_worker, "run a worker: pull partitions from a coordinator and run them on this machine")
    sp.add_argument("--coordinator", help="HOST:PORT of the coordinator's worker API (env PERSONA_COORDINATOR)")
    sp.add_argument("--token", help="the worker credential (default: service.worker_token, else the worker-token "
                                    "file beside service.db_path)")
    sp.add_argument("--credits", type=int, help="partitions run at once (default: service.worker_credits)")
    sp.add_argument("--metrics-listen", help="HOST:PORT of this worker's Prometheus /metrics ('none': off; default: "
                                             "service.metrics_listen, skipped when that port is taken)")
    threads(sp, "aligner threads")

    sp = add("submit", cmd_submit, "submit a request to the service: a command and its arguments, as you would "
                                   "run it; '+' chains commands run in order")
    sp.add_argument("--detach", action="store_true", help="print the request id and return at once")
    sp.add_argument("--label", help="free text shown by persona status")
    sp.add_argument("--idempotency-key", help="a second submit with the same key returns the first request")
    sp.add_argument("--timeout", type=float, help="give up following after this many seconds")
    sp.add_argument("--json", action="store_true", help="print each status as a JSON line")
    service_client(sp)
    sp.add_argument("request", nargs=argparse.REMAINDER,
                    help=f"KIND ARGS... [+ KIND ARGS...]; KIND: {', '.join(SUBMIT_KINDS)}")

    sp = add("status", cmd_status, "the service's state and its requests, or one request's status")
    sp.add_argument("request_id", nargs="?")
    sp.add_argument("--state", action="append", choices=["queued", "running", "done", "failed", "cancelled"],
                    help="only requests in this state (repeatable)")
    sp.add_argument("--kind", help="only requests with a step of this kind")
    sp.add_argument("--limit", type=_positive, default=20, help="at most this many requests (default 20)")
    sp.add_argument("--json", action="store_true")
    service_client(sp)

    sp = add("cancel", cmd_cancel, "cancel a request; its unfinished step leaves no output")
    sp.add_argument("request_id")
    sp.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to stop (default 120)")
    service_client(sp)

    sp = add("watch", cmd_watch, "follow a request's progress until it finished")
    sp.add_argument("request_id")
    sp.add_argument("--timeout", type=float, help="give up after this many seconds")
    sp.add_argument("--json", action="store_true", help="print each status as a JSON line")
    service_client(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "export" and not any(e.startswith("-") for e in extra):
        args.regions = list(args.regions or []) + extra  # regions after options: `export ds o.bam -n x chr1`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    rt = None
    try:
        level = "DEBUG" if getattr(args, "verbose", False) else \
            "ERROR" if getattr(args, "quiet", False) else _config(args).logging.level
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
        from persona.apps.job import set_command_line

        set_command_line(["persona", *(sys.argv[1:] if argv is None else list(argv))])
        rc = int(args.func(args) or 0)
        rt = getattr(args, "_rt", None)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return rc
    except UsageError as exc:
        print(f"persona: error: {exc}", file=sys.stderr)
        return 2
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
        if _broken_pipe(exc):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"persona: error: {msg}", file=sys.stderr)
        return 1
    finally:
        rt = rt or getattr(args, "_rt", None)
        if rt is not None:
            rt.stop()


def _broken_pipe(exc: BaseException) -> bool:
    """A stage error whose cause is a closed output pipe (``persona export ds - | head``)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        if isinstance(e, BrokenPipeError):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
