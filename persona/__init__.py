"""Persona: pipelined genomic secondary analysis on AGD datasets.

``persona.open(location)`` opens a dataset for reading (see :mod:`persona.api`).
"""
from __future__ import annotations

from typing import Any

from persona.errors import PersonaError

__version__ = "0.1.0"
__all__ = ["PersonaError", "__version__", "open"]


def open(location: Any, name: str | None = None) -> Any:  # noqa: A001 - the API's name
    """Open the AGD dataset at ``location`` for reading: :func:`persona.api.open`."""
    from persona.api import open as _open

    return _open(location, name)
