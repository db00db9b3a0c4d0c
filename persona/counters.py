"""Process-wide counters of work done, read by the metrics endpoint at scrape time.

The apps and the stores count here whether or not a service runs (a counter add is a dict
update under a lock); :class:`persona.service.metrics.Metrics` turns the totals into its
Prometheus counters when scraped:

* ``bases`` ``(app,)``: bases of the reads an app finished (import, align, export, ...);
* ``store_bytes`` ``(scheme, op)``: bytes read (``read``) from and written (``write``) to stores;
* ``store_errors`` ``(scheme, op)``: store operations that failed with an I/O error (a missing
  key is an answer, not an error).
"""
from __future__ import annotations

import threading
from collections import defaultdict

_lock = threading.Lock()
_values: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))


def add(name: str, labels: tuple[str, ...], amount: float) -> None:
    """Add ``amount`` to counter ``name`` with ``labels``."""
    if amount:
        with _lock:
            _values[name][labels] += amount


def snapshot() -> dict[str, dict[tuple[str, ...], float]]:
    """Every counter's totals so far (a copy)."""
    with _lock:
        return {name: dict(series) for name, series in _values.items()}
