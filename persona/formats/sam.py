"""SAM text: the header Persona writes, and SAM record lines for an AGD chunk.

The header always has ``@HD`` (VN:1.6, SO from the dataset's sort order),
one ``@SQ`` per reference contig, one ``@RG`` (every record carries its ID as
an ``RG:Z`` tag) and one ``@PG`` for Persona. Records come from the decoded
AGD columns of one chunk through the Cython kernel
:func:`persona._native.bam.format_sam` (one call per chunk, GIL released).
"""
from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from persona._native import bam as _kernel
from persona.agd.ragged import RaggedArray
from persona.agd.records import Alignments
from persona.errors import ConfigError

SAM_VERSION = "1.6"
#: Manifest ``sort`` values and the @HD SO value each one becomes.
SORT_ORDERS = {"coordinate": "coordinate", "queryname": "queryname", "unsorted": "unsorted", "unknown": "unknown"}
_BAD_VALUE = re.compile(r"[\t\n\r]")
_RG_ID = re.compile(r"^[!-~]+$")


@dataclass(frozen=True)
class ReadGroup:
    """The ``@RG`` line: ID and SM default to the dataset name; LB and PL are optional.

    PL should be one of the SAM spec's platform names (ILLUMINA, ONT, PACBIO, ...);
    Picard flags other values.
    """

    id: str
    sample: str
    library: str | None = None
    platform: str | None = None

    @classmethod
    def for_dataset(cls, dataset_name: str, options: "ReadGroup | Mapping[str, str] | None" = None) -> "ReadGroup":
        """The read group to write: ``options`` (a ReadGroup, or a mapping with keys
        ``id``/``sample``/``library``/``platform`` or their SAM tags ``ID``/``SM``/``LB``/``PL``)
        over defaults ID = SM = dataset name."""
        if isinstance(options, ReadGroup):
            rg = options
        else:
            opts = dict(options or {})
            aliases = {"ID": "id", "SM": "sample", "LB": "library", "PL": "platform"}
            norm: dict[str, str] = {}
            for key, value in opts.items():
                field = aliases.get(key, key)
                if field not in ("id", "sample", "library", "platform"):
                    raise ConfigError(f"unknown read group option {key!r}", key="read_group")
                norm[field] = value
            rg = cls(
                id=norm.get("id") or dataset_name,
                sample=norm.get("sample") or dataset_name,
                library=norm.get("library"),
                platform=norm.get("platform"),
            )
        rg.validate()
        return rg

    def validate(self) -> None:
        if not _RG_ID.match(self.id):
            raise ConfigError(f"read group ID {self.id!r} must be printable text without spaces", key="read_group.id")
        for name in ("sample", "library", "platform"):
            value = getattr(self, name)
            if value is not None and (not value or _BAD_VALUE.search(value)):
                raise ConfigError(f"read group {name} {value!r} is empty or has a tab/newline", key=f"read_group.{name}")

    def header_line(self) -> str:
        fields = [f"ID:{self.id}", f"SM:{self.sample}"]
        if self.library:
            fields.append(f"LB:{self.library}")
        if self.platform:
            fields.append(f"PL:{self.platform}")
        return "@RG\t" + "\t".join(fields)


def contig_pairs(contigs: Iterable[Any] | None) -> list[tuple[str, int]]:
    """``(name, length)`` per contig, in index order, from Contig objects, dicts or pairs."""
    out: list[tuple[str, int]] = []
    for c in contigs or ():
        if isinstance(c, Mapping):
            out.append((str(c["name"]), int(c["length"])))
        elif hasattr(c, "name") and hasattr(c, "length"):
            out.append((str(c.name), int(c.length)))
        else:
            name, length = c
            out.append((str(name), int(length)))
    return out


def default_command_line() -> str:
    """The running command, as one header-safe line (for @PG CL)."""
    return _BAD_VALUE.sub(" ", " ".join(shlex.quote(a) for a in sys.argv)) or "persona"


def build_header(
    *,
    contigs: Sequence[tuple[str, int]],
    sort: str | None,
    read_group: ReadGroup,
    version: str,
    command_line: str | None = None,
) -> str:
    """The SAM header text (each line ending in a newline).

    ``sort`` is the manifest's sort order; values outside SAM's SO vocabulary
    (and None) become ``unknown``.
    """
    so = SORT_ORDERS.get(sort or "unknown", "unknown")
    lines = [f"@HD\tVN:{SAM_VERSION}\tSO:{so}"]
    for name, length in contigs:
        if not name or _BAD_VALUE.search(name) or length <= 0:
            raise ValueError(f"reference contig {name!r} (length {length}) cannot be written to a SAM header")
        lines.append(f"@SQ\tSN:{name}\tLN:{length}")
    lines.append(read_group.header_line())
    cl = _BAD_VALUE.sub(" ", command_line if command_line is not None else default_command_line())
    lines.append(f"@PG\tID:persona\tPN:persona\tVN:{version}\tCL:{cl}")
    return "\n".join(lines) + "\n"


def contig_names(contigs: Sequence[tuple[str, int]]) -> RaggedArray:
    """Contig names as a RaggedArray, the form the SAM kernel takes."""
    return RaggedArray.from_list([name.encode() for name, _ in contigs])


def format_records(
    metadata: RaggedArray,
    bases: RaggedArray,
    quals: RaggedArray,
    alignments: Alignments,
    names: RaggedArray,
    read_group_id: str,
) -> bytes:
    """SAM lines for one chunk (see :mod:`persona._native.bam` for the per-field rules).

    ``bases``/``quals`` are in sequencing orientation; reverse-strand records
    are flipped here. Raises ``ValueError`` naming the bad record's index.
    """
    return _kernel.format_sam(
        metadata.data, metadata.offsets,
        bases.data, bases.offsets,
        quals.data, quals.offsets,
        np.ascontiguousarray(alignments.fields),
        alignments.cigars.data, alignments.cigars.offsets,
        names.data, names.offsets,
        read_group_id.encode(),
    )
