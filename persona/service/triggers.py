"""Triggers: submit a request when new input appears under a store prefix (``persona serve --watch``).

    persona serve --watch /data/incoming --then align,sort,markdup --output /data/agd -r sacCer3

Every ``poll`` seconds the prefix is listed (any :class:`~persona.storage.base.Store` that lists:
``file://``, ``memory://``, ``s3://``, ``ceph://``) and two kinds of input are recognised:

* a **FASTQ pair**: ``<sample><sep>[R]1[<sep>NNN].fastq[.gz]`` and its ``2`` twin in the same
  directory (``x_R1.fastq.gz``/``x_R2.fastq.gz``, ``x_1.fq``/``x_2.fq``, ``x_R1_001.fastq.gz``,
  ``x.1.fq``; ``fq``/``fastq``, gzipped or not). It is ready once both files are non-empty and
  their sizes did not change between two consecutive polls (a file still being copied is not
  picked up). The chain is ``import`` into ``output`` as dataset ``<sample>``, then ``--then``.
* an **AGD dataset**: a manifest ``<name>_metadata.json`` (written last, when the dataset's
  transaction commits: its presence means the dataset is complete). The chain is ``--then``
  (without ``import``) on that dataset. Datasets under ``output`` are the triggers' own results
  and are never picked up (``output`` equal to the watched prefix: only FASTQ pairs are inputs).

Idempotency: each input is submitted with the idempotency key ``trigger:<sha256 of the store
URL, the input's keys and the chain>``; the request table (SQLite) keeps the key, so the same input
never runs twice, across service restarts too. An input whose request could not be submitted
(a path outside the service's roots, say) is logged once and skipped until the next restart.

:class:`Watcher` is the bookkeeping (listings in, ready inputs out: plain code, tested without a
store or a clock); :class:`Trigger` turns ready inputs into request steps; the service owns the
polling loop (:meth:`Trigger.poll` from a thread, :meth:`~persona.service.server.Service.submit`
on its loop).
"""
from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from persona.errors import ConfigError

log = logging.getLogger(__name__)

#: the kinds a trigger may chain, in the order they may appear
KINDS = ("import", "align", "sort", "markdup", "export", "stats")
MANIFEST_SUFFIX = "_metadata.json"
_FASTQ = re.compile(r"^(?P<sample>.+?)(?P<sep>[._-])(?P<r>[Rr]?)(?P<mate>[12])(?P<tail>(?:[._-]\d+)?)"
                    r"\.(?P<ext>fastq|fq)(?P<gz>\.gz)?$")


def parse_kinds(text: str) -> tuple[str, ...]:
    """``align,sort,markdup`` (also ``+`` or ``-`` between kinds) -> ``("align", "sort", "markdup")``."""
    parts = [p.strip().lower() for p in re.split(r"[,+\s]+", text) if p.strip()]
    kinds: list[str] = []
    for p in parts:
        kinds.extend(p.split("-") if all(k in KINDS for k in p.split("-")) else [p])
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ConfigError(f"--then: expected kinds from {', '.join(KINDS)} separated by commas, got {text!r}")
    if "import" in kinds[1:]:
        raise ConfigError("--then: import can only come first (it makes the dataset the others use)")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"--then: a kind appears twice in {text!r}")
    return tuple(kinds)


@dataclass(frozen=True)
class Found:
    """A ready input: ``kind`` ``fastq-pair`` (keys R1, R2; ``name`` the sample) or ``agd``
    (keys: the manifest; ``name`` the dataset; ``directory`` its location inside the store)."""

    kind: str
    name: str
    directory: str
    keys: tuple[str, ...]


class Watcher:
    """What is ready, from successive listings ``{key: size}`` of a prefix (pure bookkeeping)."""

    def __init__(self, *, ignore: Iterable[str] = (), datasets: bool = True) -> None:
        """``ignore``: key prefixes never looked at; ``datasets`` False: AGD manifests are not inputs."""
        self.ignore = tuple(p.rstrip("/") + "/" for p in ignore if p)
        self.datasets = datasets
        self._previous: dict[str, int] = {}
        self._reported: set[tuple[str, ...]] = set()

    def observe(self, sizes: Mapping[str, int]) -> list[Found]:
        """Inputs ready in this listing that no earlier call returned."""
        previous, self._previous = self._previous, dict(sizes)
        found: list[Found] = []
        mates: dict[tuple[str, str, str, str], dict[str, str]] = {}
        for key in sorted(sizes):
            if any(key.startswith(p) for p in self.ignore):
                continue
            directory, base = posixpath.split(key)
            if base.endswith(MANIFEST_SUFFIX) and len(base) > len(MANIFEST_SUFFIX):
                if self.datasets:
                    found.append(Found("agd", base[: -len(MANIFEST_SUFFIX)], directory, (key,)))
                continue
            m = _FASTQ.match(base)
            if m:
                pair_id = (directory, m["sample"], m["tail"], f"{m['sep']}{m['r'].upper()}.{m['ext']}{m['gz'] or ''}")
                mates.setdefault(pair_id, {})[m["mate"]] = key
        for (directory, sample, tail, _), keys in mates.items():
            if set(keys) != {"1", "2"}:
                continue
            r1, r2 = keys["1"], keys["2"]
            # both complete: non-empty, and the same size as at the previous poll
            if all(sizes[k] > 0 and previous.get(k) == sizes[k] for k in (r1, r2)):
                found.append(Found("fastq-pair", _dataset_name(sample + tail), directory, (r1, r2)))
        out = [f for f in found if f.keys not in self._reported]
        # remember only inputs still listed: memory follows the listing, not the service's age (an
        # input that comes back is found again; the request table's idempotency key stops a rerun)
        self._reported = {k for k in self._reported if all(x in sizes for x in k)}
        self._reported.update(f.keys for f in out)
        return out

    def forget(self, found: Found) -> None:
        """Report ``found`` again when it is next ready (its submission did not go through)."""
        self._reported.discard(found.keys)


def _dataset_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("._-") or "sample"


@dataclass(frozen=True)
class TriggerSpec:
    """``--watch PREFIX --then KINDS``: where to look, what to run, where outputs go."""

    watch: str
    then: tuple[str, ...]
    output: str
    reference: str | None = None
    sort_order: str = "coordinate"
    export_format: str = "bam"
    poll_seconds: float = 10.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.then:
            raise ConfigError("a trigger needs --then KINDS")
        if "align" in self.then and not self.reference:
            raise ConfigError("--then align needs a reference (--reference NAME or FASTA)")
        if self.poll_seconds <= 0:
            raise ConfigError(f"--poll must be > 0 seconds, got {self.poll_seconds}")
        if not self.output:
            raise ConfigError("a trigger needs --output LOCATION (where its datasets go)")


class Trigger:
    """One ``--watch``: lists the prefix, tells ready inputs to :class:`Watcher`, and builds each
    one's request steps and idempotency key."""

    def __init__(self, spec: TriggerSpec, *, metrics: Any = None) -> None:
        """``metrics``: a :class:`~persona.service.metrics.Metrics` the listing's store I/O is counted in."""
        from persona.storage.registry import open_store

        self.spec = spec
        self.store = open_store(spec.watch)  # its I/O is counted by the store itself (persona.counters)
        if not self.store.supports_listing:
            raise ConfigError(f"--watch {spec.watch}: this store cannot list its keys")
        self.polls = 0
        # the triggers' own outputs are never inputs: a prefix inside the watched one is skipped;
        # output = the watched prefix itself: only FASTQ pairs are inputs there
        inside = self._inside_watch(spec.output)
        self.watcher = Watcher(ignore=[inside] if inside else [], datasets=inside != "")

    def _inside_watch(self, location: str) -> str | None:
        """``location``'s key prefix inside the watched store, or None when it lies elsewhere."""
        w, o = self.spec.watch.rstrip("/"), location.rstrip("/")
        if "://" not in w and "://" not in o:
            w, o = os.path.realpath(os.path.expanduser(w)), os.path.realpath(os.path.expanduser(o))
        if o == w:
            return ""
        return o[len(w) + 1:] if o.startswith(w + "/") else None

    def _listing(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for key in self.store.list(""):
            base = posixpath.basename(key)
            if base.endswith(MANIFEST_SUFFIX) or _FASTQ.match(base):
                try:
                    sizes[key] = self.store.size(key)
                except Exception:  # noqa: BLE001 - gone between list and size: seen next poll
                    continue
        return sizes

    def poll(self) -> list[tuple[Found, list[dict[str, Any]], str, str]]:
        """List once; ``(found, steps, label, idempotency key)`` for each newly ready input."""
        self.polls += 1
        out = []
        for f in self.watcher.observe(self._listing()):
            try:
                steps = self.steps(f)
            except ConfigError as exc:
                log.warning("trigger %s: %s: %s", self.spec.watch, "/".join(f.keys), exc)
                continue
            if steps:
                out.append((f, steps, f"trigger {self.spec.watch}: {f.name}", self.key(f)))
        return out

    def key(self, f: Found) -> str:
        h = hashlib.sha256("\0".join([self.store.url, *f.keys, *self.spec.then]).encode()).hexdigest()
        return f"trigger:{h[:32]}"

    def _key_location(self, key: str) -> str:
        path = self.store.path_of(key)
        return path if path is not None else f"{self.store.url.rstrip('/')}/{key}"

    def steps(self, f: Found) -> list[dict[str, Any]]:
        """The request steps (dicts, as :func:`persona.apps.job.request_from_dict` reads them)."""
        kinds = list(self.spec.then)
        if f.kind == "fastq-pair":
            location, name = self.spec.output, f.name
            steps: list[dict[str, Any]] = [{"kind": "import", "inputs": [self._key_location(k) for k in f.keys],
                                            "output": location, "name": name}]
            if kinds and kinds[0] == "import":
                kinds = kinds[1:]
        else:
            if kinds[0] == "import":
                return []  # this trigger imports FASTQ only
            location, name = posixpath.dirname(self._key_location(f.keys[0])), f.name
            steps = []
        for kind in kinds:
            if kind == "align":
                steps.append({"kind": "align", "dataset": location, "name": name, "reference": self.spec.reference})
            elif kind == "sort":
                sorted_name = f"{name}_sorted"
                out = self.spec.output
                steps.append({"kind": "sort", "dataset": location, "input_name": name, "output": out,
                              "name": sorted_name, "order": self.spec.sort_order, "overwrite": True})
                location, name = out, sorted_name
            elif kind == "markdup":
                steps.append({"kind": "markdup", "dataset": location, "name": name})
            elif kind == "export":
                target = self.spec.output.rstrip("/") + f"/{name}.{self.spec.export_format}"
                steps.append({"kind": "export", "dataset": location, "name": name, "output": target,
                              "format": self.spec.export_format})
            elif kind == "stats":
                steps.append({"kind": "stats", "dataset": location, "name": name})
        return steps
