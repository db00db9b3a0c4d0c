"""Where datasets and references are: location resolution shared by the CLI and the service.

A dataset location is a store URL (``file:///data``, ``memory://x``, ``ceph://pool/ns``), a
directory path, or the path of a manifest file (``/data/yeast_metadata.json``). A bare name
(``yeast``: no scheme, no path separator) resolves under ``storage.default_url`` when that is
set, else the current directory.
"""
from __future__ import annotations

import os
from typing import Any


def resolve_location(value: str, config: Any = None) -> str:
    """The dataset location ``value`` names (see the module docstring)."""
    if config is None:
        from persona.config import get_config

        config = get_config()
    base = config.storage.default_url
    if (not base or "://" in value or "/" in value or os.sep in value or value in (".", "..", "-")
            or value.startswith("~")):
        return value
    if "://" in base:
        return f"{base.rstrip('/')}/{value}"
    return os.path.join(os.path.expanduser(base), value)


def references_location(value: str | None, config: Any = None) -> str:
    """The reference store: ``value``, else ``align.references_url``."""
    if value:
        return value
    if config is None:
        from persona.config import get_config

        config = get_config()
    return config.align.references_url
