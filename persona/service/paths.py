"""Request paths confined to the roots the service's config allows (``service.roots``).

Every path-like field of a request (``inputs``, ``output``, ``output2``, ``dataset``, ``metrics``,
``references_url``, and ``reference`` when it names a FASTA file) must lie under a root:

* a path with a ``..`` component is refused outright;
* a relative path is taken relative to the first directory root;
* an absolute path (or ``file://`` URL) must, once symlinks are resolved, lie inside a directory
  root;
* a store URL (``memory://``, ``ceph://``, ``s3://``) must start with a URL root, and may carry
  store options (``?endpoint=...``, ``?conf=...``) only when they are the root's own: options
  could otherwise send the service's credentials to another server or open another cluster;
* ``-`` (standard input or output) is refused: the service has none to offer.

Dataset names (``name``, ``input_name``, ``out_name``) must not be absolute nor hold ``..``;
an export's ``reference`` (the CRAM reference FASTA) is a path like the others.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from persona.errors import PersonaError

PATH_FIELDS = ("inputs", "output", "output2", "dataset", "metrics", "references_url", "regions_file")
NAME_FIELDS = ("name", "input_name", "out_name")


class PathNotAllowed(PersonaError):
    """A request names a path outside the service's roots."""


def _has_dotdot(path: str) -> bool:
    return any(part == ".." for part in path.replace("\\", "/").split("/"))


class Roots:
    """The allowed roots: directories and store URL prefixes."""

    def __init__(self, roots: Iterable[str]) -> None:
        self.dirs: list[str] = []
        self.urls: list[str] = []
        self.url_options: list[str] = []  # each URL root's query ('' when none)
        for r in roots:
            r = r.strip()
            if not r:
                continue
            if "://" in r and not r.startswith("file://"):
                base, _, query = r.partition("?")
                self.urls.append(base.rstrip("/") + "/")
                self.url_options.append(query)
            else:
                d = r[len("file://"):] if r.startswith("file://") else r
                self.dirs.append(os.path.realpath(os.path.expanduser(d)))
        if not self.dirs and not self.urls:
            raise PersonaError("service.roots: no root given")

    @classmethod
    def parse(cls, text: str | None, default: str) -> "Roots":
        """Comma-separated roots (``service.roots``); None: ``default`` alone."""
        return cls(text.split(",") if text else [default])

    def confine(self, value: str, field: str = "path") -> str:
        """``value`` if allowed (a relative path joined to the first root), else PathNotAllowed."""
        if value == "-":
            raise PathNotAllowed(f"{field}: standard input/output is not available through the service")
        if _has_dotdot(value):
            raise PathNotAllowed(f"{field}: '..' is not allowed in request paths: {value!r}")
        if "://" in value and not value.startswith("file://"):
            base, _, query = value.partition("?")
            inside = False
            for u, options in zip(self.urls, self.url_options):
                if base.rstrip("/") + "/" == u or base.startswith(u):
                    inside = True
                    if not query or query == options:
                        return value
            if inside:
                raise PathNotAllowed(f"{field}: store options '?{query}' are not allowed in request paths "
                                     f"(only the ones the service's roots name): {value!r}")
            raise PathNotAllowed(f"{field}: {value!r} is outside the stores this service allows")
        path = value[len("file://"):] if value.startswith("file://") else os.path.expanduser(value)
        if not os.path.isabs(path):
            if not self.dirs:
                raise PathNotAllowed(f"{field}: relative path {value!r} but the service has no directory root")
            path = os.path.join(self.dirs[0], path)
        real = os.path.realpath(path)
        for d in self.dirs:
            if real == d or real.startswith(d.rstrip(os.sep) + os.sep):
                return ("file://" + path) if value.startswith("file://") else path
        raise PathNotAllowed(f"{field}: {value!r} is outside the directories this service allows")

    def confine_request(self, d: Mapping[str, Any]) -> dict[str, Any]:
        """A request dict with every path field checked (and relative paths made absolute)."""
        out = dict(d)
        for key in PATH_FIELDS:
            v = out.get(key)
            if isinstance(v, str):
                out[key] = self.confine(v, f"{d.get('kind')}.{key}")
            elif isinstance(v, (list, tuple)):
                out[key] = [self.confine(x, f"{d.get('kind')}.{key}") if isinstance(x, str) else x for x in v]
        ref = out.get("reference")
        if isinstance(ref, str) and (d.get("kind") == "export" or
                                     (d.get("kind") == "align" and ("/" in ref or "://" in ref))):
            out["reference"] = self.confine(ref, f"{d.get('kind')}.reference")
        for key in NAME_FIELDS:
            v = out.get(key)
            if isinstance(v, str) and (_has_dotdot(v) or v.startswith(("/", "\\"))):
                raise PathNotAllowed(f"{d.get('kind')}.{key}: a dataset name must not be absolute nor hold "
                                     f"'..': {v!r}")
        return out
