"""Export as a job: AGD -> BAM / SAM / FASTQ(.gz), to files or standard output.

Every export request is a batch in the runtime's one ``export`` pipeline::

    read      ->  decode      ->  encode              ->  compress            ->  write
    chunk files   decompress,     BAM records / SAM /     BGZF blocks (BAM),      in chunk order
    (checksums    unpack bases    FASTQ text (Cython,     gzip member (.gz),      to the output(s)
    checked)                      GIL released)           or as is

* ``write`` has one replica and keeps a small reorder buffer, so the output is
  in dataset order whatever the replica counts upstream; the bounded gates
  bound that buffer, hence memory.
* BGZF blocks are cut per chunk (each chunk's records start a new block), which
  every BGZF reader accepts; the header is its own block, as samtools writes it.
* Outputs go through :func:`persona.formats.output.open_output`: ``-`` is
  standard output, a regular file appears complete (temporary file + rename) or
  not at all, a FIFO, device or symbolic link is written in place.
* The header's ``@PG`` lines are the dataset's provenance chain (one per app run
  that wrote it, ``PP`` linking each to the one before) and this export.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, IO, Any, ClassVar

import numpy as np

import persona
from persona import counters
from persona.agd import BASE, METADATA, QUAL, Dataset
from persona.agd.columns import TAGS, column_sort_key, is_alignment_column, tags_column
from persona.agd.ragged import RaggedArray
from persona.apps.job import DatasetReadJob, Request, StagePlan, Summary, Work
from persona.errors import ConfigError, DatasetError
from persona.formats import bgzf
from persona.formats.bam import encode_records, header_block
from persona.formats.fastq import format_records as fastq_records
from persona.formats.output import open_output
from persona.formats.sam import ReadGroup, build_header, contig_names, contig_pairs
from persona.formats.sam import format_records as sam_records

if TYPE_CHECKING:
    from persona.config import Config
    from persona.runtime import Runtime

FORMATS = ("bam", "sam", "fastq", "cram")


def format_for(output: str, fmt: str | None) -> str:
    """The export format: ``fmt``, else from the output's suffix (``-`` needs ``fmt``... or SAM)."""
    if fmt is not None:
        f = fmt.lower()
        if f not in FORMATS:
            raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}", key="format")
        return f
    out = output.lower()
    if out == "-":
        return "sam"
    if out.endswith(".bam"):
        return "bam"
    if out.endswith(".cram"):
        return "cram"
    if out.endswith(".sam"):
        return "sam"
    if out.endswith((".fastq", ".fq", ".fastq.gz", ".fq.gz")):
        return "fastq"
    raise ConfigError(f"cannot tell the export format of {output!r} from its name: pass a format "
                      f"({', '.join(FORMATS)})", key="format")


@dataclass
class ExportRequest(Request):
    """Export ``dataset`` to ``output`` (``-``: standard output) and, for paired FASTQ, ``output2``."""

    kind: ClassVar[str] = "export"

    dataset: str
    output: str
    output2: str | None = None
    format: str | None = None
    name: str | None = None
    #: FASTQ: gzip the output (None: when the output name ends in .gz)
    gzip: bool | None = None
    level: int | None = None
    read_group: dict[str, str] = field(default_factory=dict)
    secondary: bool = True
    secondary_seq: bool = False
    command_line: str | None = None
    threads: int | None = None
    #: CRAM: the reference FASTA (default: the registered reference the dataset was aligned to)
    reference: str | None = None
    references_url: str | None = None
    #: samtools-style regions (``chr1``, ``chr1:1000-2000``; 1-based, inclusive) of a coordinate-sorted
    #: dataset: only the records overlapping them, reading only the chunks that may hold them
    #: (:mod:`persona.apps.region`)
    regions: tuple[str, ...] = ()
    #: a BED file of intervals (``samtools view -L``): only the records overlapping one of them (and a
    #: region, where ``regions`` are given too)
    regions_file: str | None = None

    def resolved(self, config: "Config") -> "ExportRequest":
        fmt = format_for(self.output, self.format)
        gz = self.gzip if self.gzip is not None else (fmt == "fastq" and self.output.endswith(".gz"))
        level = self.level if self.level is not None else config.export.bgzf_level
        if not 0 <= level <= 9:
            raise ConfigError(f"compression level must be 0..9, got {level}", key="level")
        if self.output2 is not None and fmt != "fastq":
            raise ConfigError("a second output file is only for paired FASTQ", key="output2")
        if self.output2 is not None and self.output2 == self.output:
            raise ConfigError("the two FASTQ outputs must differ", key="output2")
        return replace(self, format=fmt, gzip=gz, level=level)

    def plan(self, runtime: "Runtime", request_id: str) -> "ExportJob":
        if self.regions or self.regions_file is not None:
            from persona.apps.region import RegionExportJob

            return RegionExportJob(self, request_id, runtime)
        return ExportJob(self, request_id, runtime)


@dataclass
class ExportSummary(Summary):
    """What an export wrote."""

    path: str = ""
    format: str = ""
    records: int = 0
    chunks: int = 0
    bytes_written: int = 0
    sort_order: str = ""
    #: of ``records``, how many came from ``secondary<N>`` columns
    secondary_records: int = 0
    paths: list[str] = field(default_factory=list)


class ExportJob(DatasetReadJob):
    kind: ClassVar[str] = "export"
    stages = (StagePlan("read", 1), StagePlan("decode", 2), StagePlan("encode", 2), StagePlan("compress", 2),
              StagePlan("write", 1))
    capacity: ClassVar[int] = 3
    request: ExportRequest

    def __init__(self, request: ExportRequest, request_id: str, runtime: "Runtime") -> None:
        super().__init__(request, request_id, runtime)
        r = request
        self.ds = ds = Dataset.open(r.dataset, r.name)
        self.fmt = r.format or "sam"
        # CRAM: BAM records are written to a scratch BAM, then re-encoded against the reference
        self.cram_fasta: str | None = None
        self.cram_output: str | None = None
        if self.fmt == "cram":
            from persona.formats.cram import reference_fasta

            self.cram_fasta = reference_fasta(r.reference or ds.manifest.reference, r.references_url)
            self.cram_output = r.output
            self.fmt = "bam"
            import tempfile

            self._scratch = tempfile.mkdtemp(prefix="persona-cram-")
            r = replace(r, output=os.path.join(self._scratch, "records.bam"))
        needed = [BASE, QUAL, METADATA]
        missing = [c for c in needed if c not in ds.columns]
        if missing:
            what = "FASTQ" if self.fmt == "fastq" else "SAM/BAM"
            raise DatasetError(f"dataset {ds.name!r} lacks column(s) {missing} needed for {what} export",
                               store=ds.store.url)
        self.paired = ds.paired
        self.aligned = "results" in ds.columns and self.fmt != "fastq"
        self.sec_columns: list[str] = []
        self.contigs: list[tuple[str, int]] = []
        self.sort = ds.manifest.sort or "unknown"
        if self.fmt == "fastq":
            if r.output2 is not None and not self.paired:
                raise DatasetError(f"dataset {ds.name!r} is not paired; cannot write a second FASTQ file")
            self.outputs = [r.output] + ([r.output2] if r.output2 is not None else [])
        else:
            self.outputs = [r.output]
            self.contigs = contig_pairs(ds.manifest.reference_contigs)
            if self.aligned and not self.contigs:
                raise DatasetError(f"dataset {ds.name!r} has results but no reference_contigs in its manifest",
                                   store=ds.store.url)
            if not self.aligned and self.paired and ds.num_records % 2:
                raise DatasetError(f"paired dataset {ds.name!r} has an odd number of records ({ds.num_records})",
                                   store=ds.store.url)
            self.rg = ReadGroup.for_dataset(ds.name, effective_read_group(ds, r.read_group))
            if self.aligned and r.secondary:
                self.sec_columns = sorted((c for c in ds.columns if is_alignment_column(c) and c != "results"),
                                          key=column_sort_key)
            self.names: RaggedArray = contig_names(self.contigs)
        # optional tags of each exported alignment column (BAM aux bytes), where the dataset has them
        self.tag_columns: dict[str, str] = {}
        if self.fmt != "fastq":
            for c in (["results"] if self.aligned else []) + self.sec_columns:
                if tags_column(c) in ds.columns:
                    self.tag_columns[c] = tags_column(c)
            if not self.aligned and TAGS in ds.columns:
                self.tag_columns["results"] = TAGS
        self.columns = ([BASE, QUAL, METADATA] + (["results"] if self.aligned else []) + self.sec_columns
                        + list(self.tag_columns.values()))
        self.read_columns = tuple(self.columns)
        self._stack = contextlib.ExitStack()
        self._files: list[IO[bytes]] = []
        self._next = 0
        self._pending: dict[int, list[bytes]] = {}
        self.records = 0
        self.secondary_records = 0
        self.bytes_written = 0
        #: a coordinate-sorted export's extra records, placed at their own coordinates (begin())
        self.extras: Any = None

    # -- planning --------------------------------------------------------------------------
    def _header(self) -> bytes:
        from persona.apps.export_sam import sort_order

        sort = sort_order(self.ds)
        self.sort = sort
        m = self.ds.manifest
        contigs = sorted(m.reference_contigs, key=lambda c: c.index)
        other_rgs = []
        for rg in m.extra.get("read_groups") or []:  # an imported BAM's @RG lines
            try:
                other_rgs.append(ReadGroup.for_dataset(self.ds.name, {k: v for k, v in rg.items()}))
            except Exception:  # noqa: BLE001 - a malformed imported line is not worth failing the export
                continue
        text = build_header(
            contigs=self.contigs, sort=sort, read_group=self.rg, version=persona.__version__,
            command_line=self.request.command_line,
            md5s=[c.md5 for c in contigs] if self.aligned else None,
            reference_uri=self._reference_uri() if self.aligned else None,
            # import keeps reads grouped by name (mates together) unless the dataset was sorted
            group_order="query" if sort in ("unsorted", "unknown") and m.sort == "queryname" else None,
            read_groups=other_rgs, comments=[str(c) for c in m.extra.get("comments") or []])
        text = replace_pg_lines(text, self.ds.manifest.provenance, self.request.command_line)
        if self.fmt == "sam":
            return text.encode()
        block = header_block(text, self.contigs)
        return bgzf.compress_blocks(block, self.request.level or 6)

    def begin(self) -> None:
        from persona.apps.export_sam import sort_order

        if self.aligned and self.sec_columns and self.fmt in ("bam", "sam") and sort_order(self.ds) == "coordinate":
            # extra records go to their own coordinates: a first pass collects them (export_sorted)
            from persona.apps.export_sorted import SortedExtras

            mb = self.runtime.config.export.sorted_extras_memory_mb
            self.extras = SortedExtras(len(self.ds.chunks), self.fmt, self._encode_with_extras,
                                       memory_limit=mb << 20, submit=self.runtime.compute.submit,
                                       in_flight=max(2, self.runtime.threads))
            try:
                self.extras.build()
            except BaseException:
                self.extras.close()
                raise
        try:
            for out in self.outputs:
                self._files.append(self._stack.enter_context(open_output(out, "wb")))
            if self.fmt != "fastq":
                self._write(0, self._header())
        except BaseException:
            self._close(sys.exc_info()[1])
            raise

    # -- stages ----------------------------------------------------------------------------
    def stage_encode(self, w: Work) -> Work:
        i = w.desc.chunk
        values = w.data
        meta, bases, quals = values[METADATA], values[BASE], values[QUAL]
        w.n = len(meta)
        counters.add("bases", ("export", "encode"), int(bases.offsets[-1]) if len(bases) else 0)
        if self.fmt == "fastq":
            if self.paired and len(meta) % 2:
                raise DatasetError(f"paired dataset chunk {self.ds.chunks[i].path} holds an odd number of "
                                   f"records ({len(meta)})", key=self.ds.chunk_key(i, METADATA))
            try:
                if len(self.outputs) == 1:
                    w.data = [fastq_records(meta, bases, quals).data]
                else:
                    w.data = [fastq_records(meta, bases, quals, 0, 2).data,
                              fastq_records(meta, bases, quals, 1, 2).data]
            except ValueError as e:
                raise DatasetError(f"chunk {self.ds.chunks[i].path}: {e}", key=self.ds.chunk_key(i, QUAL)) from None
            w.out = (len(meta), 0)
            return w
        if self.extras is not None:  # coordinate-sorted: primaries here, extras at their coordinates
            al, data, offsets, _ = self._encode(i, values, interleave=False)
            data, n_sec = self.extras.merge_into(i, al, data, offsets)
        else:
            _, data, _, n_sec = self._encode(i, values, interleave=True)
        w.data = [data]
        w.out = (w.n, n_sec)
        return w

    def _encode(self, i: int, values: dict[str, Any], *, interleave: bool) -> tuple[Any, Any, Any, int]:
        """Chunk ``i``'s SAM/BAM records: ``(alignments, data, offsets or None, n_extra_records)``;
        with ``interleave`` each read's present extra rows follow its primary."""
        from persona.apps.export_sam import interleave_secondaries, unmapped_alignments

        meta, bases, quals = values[METADATA], values[BASE], values[QUAL]
        n_sec = 0
        if not self.aligned:
            al = unmapped_alignments(self.ds.chunks[i], self.paired)
        else:
            al = values["results"]
        self._attach_tags(i, "results", al, values)
        if self.aligned and self.sec_columns and interleave:
            secs = [values[c] for c in self.sec_columns]
            for c, s in zip(self.sec_columns, secs):
                self._attach_tags(i, c, s, values)
            for c, s in zip(self.sec_columns, secs):
                if len(s) != len(al):
                    raise DatasetError(f"column {c!r} has {len(s)} records but results has {len(al)}",
                                       key=self.ds.chunk_key(i, c), store=self.ds.store.url)
            meta, bases, quals, al, n_sec = interleave_secondaries(
                meta, bases, quals, al, secs, secondary_seq=self.request.secondary_seq)
        offsets = None
        try:
            if self.fmt == "bam":
                data, offsets = encode_records(meta, bases, quals, al, len(self.contigs), self.rg.id)
            else:
                data = sam_records(meta, bases, quals, al, self.names, self.rg.id)
        except ValueError as e:
            where = " (record numbers count secondary records)" if self.sec_columns and interleave else ""
            raise DatasetError(f"cannot export: {e}{where}", key=self.ds.chunk_key(i, "results"),
                               store=self.ds.store.url) from None
        return al, data, offsets, n_sec

    def _encode_with_extras(self, i: int) -> tuple[Any, Any, Any]:
        """The first pass of a coordinate-sorted export (:mod:`persona.apps.export_sorted`): chunk
        ``i``'s records with its extras interleaved, encoded; only the results column and the
        extra columns are read for a chunk whose extra rows are all absent."""
        def load(c: str) -> Any:
            return self.ds.decode_file(i, c, self.ds.read_file(i, c))

        values = {c: load(c) for c in self.sec_columns}
        rows = np.flatnonzero(np.logical_or.reduce([values[c].present for c in self.sec_columns]))
        if not len(rows):
            return load("results"), b"", None
        for c in self.columns:
            if c not in values:
                values[c] = load(c)
        # only the reads that have extras are encoded, and the first read (its key bounds the chunk)
        from persona.apps.export_sorted import take_rows

        rows = np.union1d(rows, [0]).astype(np.int64)
        al, data, offsets, _ = self._encode(i, {c: take_rows(v, rows) for c, v in values.items()}, interleave=True)
        return al, data, offsets

    def _attach_tags(self, i: int, column: str, al: Any, values: dict[str, Any]) -> None:
        tc = self.tag_columns.get(column)
        if tc is None:
            return
        tags = values[tc]
        if len(tags) != len(al):
            raise DatasetError(f"column {tc!r} has {len(tags)} records but {column} has {len(al)}",
                               key=self.ds.chunk_key(i, tc), store=self.ds.store.url)
        al.tags = tags

    def stage_compress(self, w: Work) -> Work:
        if self.fmt == "bam":
            w.data = [bgzf.compress_blocks(d, self.request.level or 6) for d in w.data]
        elif self.request.gzip:
            from persona.apps.export_fastq import gzip_member

            w.data = [gzip_member(d) for d in w.data]
        else:
            w.data = [bytes(d) if not isinstance(d, bytes) else d for d in w.data]
        return w

    def stage_write(self, w: Work) -> Work:
        """One replica: write chunks in order, holding early ones (bounded by the gates)."""
        self._pending[w.desc.chunk] = w.data
        w.data = None
        while self._next in self._pending:
            i = self._next
            for k, data in enumerate(self._pending.pop(i)):
                self._write(k, data)
            self._next += 1
            self.advance(self.ds.chunks[i].num_records)
        return w

    def _write(self, k: int, data: bytes | memoryview) -> None:
        self._files[k].write(data)
        self.bytes_written += len(data)

    # -- ending ----------------------------------------------------------------------------
    def commit(self, outputs: list[Any]) -> ExportSummary:
        if self._pending:
            raise DatasetError(f"export lost chunks {sorted(self._pending)}")  # never: all feeds passed write
        for n, n_sec in outputs:
            self.records += n + n_sec
            self.secondary_records += n_sec
        if self.fmt == "bam":
            self._write(0, bgzf.EOF_BLOCK)
        self._close(None)
        if self.extras is not None:
            self.extras.close()
        paths, fmt = list(self.outputs), self.fmt
        index = None
        if (self.fmt == "bam" and self.cram_output is None and self.sort == "coordinate"
                and self.outputs[0] != "-" and os.path.isfile(self.outputs[0])):
            index = self._index(self.outputs[0], self.runtime.threads)
        if self.cram_output is not None:
            from persona.formats.cram import bam_to_cram

            try:
                with open_output(self.cram_output, "wb") as f:
                    bam_to_cram(self.outputs[0], f, self.cram_fasta or "", threads=self.runtime.threads)
                    self.bytes_written = f.tell() if f.seekable() else self.bytes_written
            finally:
                self._drop_scratch()
            paths, fmt = [self.cram_output], "cram"
        return ExportSummary(**self.summary_base(), path=paths[0], format=fmt, records=self.records,
                             chunks=len(self.ds.chunks), bytes_written=self.bytes_written,
                             sort_order=self.sort if self.fmt != "fastq" else "",
                             secondary_records=self.secondary_records, paths=paths)

    def _reference_uri(self) -> str | None:
        """``@SQ UR``: the FASTA the reference was added from, recorded in the manifest at align time."""
        uri = self.ds.manifest.extra.get("reference_uri")
        return uri if isinstance(uri, str) and uri else None

    @staticmethod
    def _index(path: str, threads: int = 1) -> str | None:
        """Write ``<path>.bai`` next to a coordinate-sorted BAM (``.csi`` where a contig is too long
        for BAI), decompressing on ``threads`` threads; returns its path."""
        import pysam

        t = ("-@", str(max(0, threads - 1))) if threads > 1 else ()  # -@: threads besides the main one
        try:
            pysam.index(*t, path)
            return path + ".bai"
        except Exception:  # noqa: BLE001 - contigs over 2^29 bp need CSI
            try:
                pysam.index(*t, "-c", path)
                return path + ".csi"
            except Exception as e:  # noqa: BLE001 - the BAM itself is complete; say why there is no index
                import logging

                logging.getLogger(__name__).warning("could not index %s: %s", path, e)
                return None

    def _drop_scratch(self) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)

    def _close(self, error: BaseException | None) -> None:
        stack, self._stack = self._stack, contextlib.ExitStack()
        if error is None:
            stack.close()
        else:
            with contextlib.suppress(BaseException):
                stack.__exit__(type(error), error, error.__traceback__)

    def abort(self, error: BaseException | None) -> None:
        self._close(error or RuntimeError("export aborted"))
        self._drop_scratch()
        if self.extras is not None:
            self.extras.close()


#: PL written when neither the dataset nor the request names the platform (Picard requires one)
DEFAULT_PLATFORM = "ILLUMINA"


def effective_read_group(ds: Dataset, overrides: dict[str, str] | None) -> dict[str, str]:
    """The dataset's read group (given at import or align with ``-R``, or from an imported BAM's
    ``@RG``) overlaid by the request's, PL defaulting to :data:`DEFAULT_PLATFORM`."""
    rg = dict(ds.manifest.extra.get("read_group") or {})
    rg.update(overrides or {})
    rg.setdefault("PL", DEFAULT_PLATFORM)
    return rg


def replace_pg_lines(header: str, provenance: list[dict[str, Any]], command_line: str | None) -> str:
    """``header`` with its ``@PG`` lines replaced by the provenance chain plus this export's line."""
    lines = [ln for ln in header.rstrip("\n").split("\n") if not ln.startswith("@PG")]
    pgs = pg_lines(provenance, command_line)
    return "\n".join(lines + pgs) + "\n"


def _clean(value: Any) -> str:
    return " ".join(str(value).replace("\t", " ").split())


def pg_lines(provenance: list[dict[str, Any]], command_line: str | None) -> list[str]:
    """``@PG`` lines: one per provenance entry (``ID``, ``PN``, ``VN``, ``CL``; ``PP`` the previous one),
    aligner runs also naming the aligner, then this export."""
    from persona.formats.sam import default_command_line

    out: list[str] = []
    used: set[str] = set()
    prev: str | None = None

    def add(pid: str, pn: str, vn: str | None, cl: str | None, extra: str = "") -> None:
        nonlocal prev
        base, k = pid, 1
        while pid in used:
            k += 1
            pid = f"{base}.{k}"
        used.add(pid)
        parts = [f"@PG\tID:{pid}\tPN:{pn}"]
        if prev is not None:
            parts.append(f"PP:{prev}")
        if vn:
            parts.append(f"VN:{_clean(vn)}")
        if cl:
            parts.append(f"CL:{_clean(cl)}")
        if extra:
            parts.append(extra)
        out.append("\t".join(parts))
        prev = pid

    for entry in provenance:
        if entry.get("imported_pg"):  # @PG lines carried from an imported SAM/BAM, as they were
            for pg in entry["imported_pg"]:
                add(str(pg.get("ID", "pg")), str(pg.get("PN", pg.get("ID", "unknown"))), pg.get("VN"), pg.get("CL"))
            continue
        app = str(entry.get("app", "persona"))
        if app == "align" and entry.get("aligner"):
            add(str(entry["aligner"]), str(entry["aligner"]), entry.get("aligner_version"), None)
        add(f"persona-{app}", "persona", entry.get("persona_version"),
            entry.get("command_line") or f"persona {app}")
    add("persona", "persona", persona.__version__,
        command_line if command_line is not None else default_command_line())
    return out


def export_dataset(request: ExportRequest, *, runtime: "Runtime | None" = None, progress: Any = None,
                   threads: int = 0) -> ExportSummary:
    from persona.runtime import run_request

    summary = run_request(request, threads=threads, runtime=runtime, progress=progress)
    assert isinstance(summary, ExportSummary)
    return summary


def output_size(path: str) -> int:
    try:
        return os.stat(path).st_size if path != "-" else 0
    except OSError:
        return 0


_ = (np, time)
