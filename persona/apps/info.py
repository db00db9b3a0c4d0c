"""``persona info``: what a dataset holds, from its manifest and chunk sizes.

Reads only the manifest and the stored size of every chunk file (no chunk is
decompressed), so it is cheap on any store.
"""
from __future__ import annotations

from typing import Any

from persona.agd import Dataset


def dataset_info(location: str, name: str | None = None) -> dict[str, Any]:
    """Columns, record and chunk counts, bytes per column, sort order and provenance of a dataset."""
    ds = Dataset.open(location, name)
    m = ds.manifest
    sizes: dict[str, int] = {}
    for col in m.columns:
        sizes[col] = sum(ds.store.size(ref.key(col)) for ref in m.records)
    chunk_records = [r.last - r.first for r in m.records]
    return {
        "name": m.name,
        "location": ds.store.url,
        "version": m.version,
        "columns": list(m.columns),
        "records": sum(chunk_records),
        "paired": ds.paired,
        "chunks": len(m.records),
        "chunk_records": {"max": max(chunk_records, default=0), "min": min(chunk_records, default=0)},
        "sort": m.sort,
        "reference": m.reference,
        "reference_contigs": len(m.reference_contigs or []),
        "bytes_per_column": sizes,
        "bytes_total": sum(sizes.values()),
        "generation": m.generation,
        "checksums": all(c in r.checksums for r in m.records for c in m.columns) if m.records else True,
        "read_group": (m.extra.get("read_group") or None),
        "paired_reason": ds.paired_reason,
        "provenance": m.provenance,
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"dataset   {info['name']}  ({info['location']})",
        f"records   {info['records']:,}" + ("  (paired, interleaved)" if info["paired"] else ""),
        f"chunks    {info['chunks']}  (records per chunk: max {info['chunk_records']['max']:,})",
        f"sort      {info['sort']}",
    ]
    if info["reference"]:
        lines.append(f"reference {info['reference']}  ({info['reference_contigs']} contigs)")
    lines.append("columns")
    per_record = max(info["records"], 1)
    for col, size in info["bytes_per_column"].items():
        lines.append(f"  {col:<12} {_human(size):>11}  {size / per_record:7.2f} B/record")
    lines.append(f"  {'total':<12} {_human(info['bytes_total']):>11}")
    if info.get("paired_reason") and info["paired_reason"] != "from the manifest":
        lines.append(f"pairing   {'paired' if info['paired'] else 'single-end'}: {info['paired_reason']}")
    rg = info.get("read_group") or {}
    rg_text = " ".join(f"{k}:{v}" for k, v in rg.items()) if rg else f"ID:{info['name']} SM:{info['name']}"
    if "PL" not in rg:
        rg_text += " PL:ILLUMINA (assumed on export: no platform was given; set it with -R or --rg-platform)"
    lines.append(f"read group {rg_text}")
    if info.get("provenance"):
        lines.append("provenance")
        for p in info["provenance"]:
            what = p.get("app", "?")
            detail = p.get("command_line") or ""
            lines.append(f"  {p.get('finished', '?')}  {what:<8} persona {p.get('persona_version', '?')}"
                         + (f"  {detail}" if detail else ""))
    return "\n".join(lines)
