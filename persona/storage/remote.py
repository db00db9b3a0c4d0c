"""What the network store backends (``ceph://``, ``s3://``) share: errors, URL options, retries.

Errors. Every failure of a remote store is a :class:`~persona.errors.StoreError` naming the key
(where there is one) and the store URL. Three subclasses say what went wrong when retrying will
not help, or when the server cannot be reached at all:

* :class:`StoreNotFoundError` -- the pool or bucket does not exist (not a missing *key*: that is
  :class:`~persona.errors.StoreKeyError`);
* :class:`StorePermissionError` -- the credentials are refused, or lack the rights for this;
* :class:`StoreUnreachableError` -- no answer from the cluster or endpoint within the timeout;
* :class:`StoreRejectedError` -- the server refused this request (object too large, out of space,
  an operation it does not support).

Retries. :func:`retry` runs an operation again, with exponential backoff and jitter, only when
it failed with an error the backend classifies as transient, and only until a deadline: a store
never hangs and never retries a permission error.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

from persona.errors import StoreError
from persona.storage.base import StoreUsageError

__all__ = [
    "StoreNotFoundError",
    "StorePermissionError",
    "StoreRejectedError",
    "StoreUnreachableError",
    "configured_defaults",
    "encode_query",
    "parse_query",
    "retry",
]

T = TypeVar("T")


class StoreNotFoundError(StoreError):
    """The pool, namespace root or bucket a store URL names does not exist."""

    transient = False


class StorePermissionError(StoreError, PermissionError):
    """The server refused the credentials, or they do not allow this operation."""

    transient = False


class StoreUnreachableError(StoreError, TimeoutError):
    """The cluster or endpoint did not answer within the timeout."""

    transient = True


class StoreRejectedError(StoreError):
    """The server refused the request itself (too large, no space, not supported); do not retry."""

    transient = False


def parse_query(url: str, allowed: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Split ``url`` into (the part before ``?``, {option: value}).

    ``allowed`` maps every accepted spelling to its canonical option name; an unknown option is a
    :class:`StoreUsageError` (a typo must not silently connect with other settings).
    """
    base, sep, query = url.partition("?")
    options: dict[str, str] = {}
    if sep:
        for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            canon = allowed.get(name)
            if canon is None:
                known = ", ".join(sorted(set(allowed.values())))
                raise StoreUsageError(f"unknown store URL option {name!r} (known: {known})", store=url)
            options[canon] = value
    return base, options


def encode_query(options: dict[str, str]) -> str:
    """``?a=1&b=2`` in sorted order (``''`` when empty); paths keep their slashes readable."""
    if not options:
        return ""
    return "?" + urlencode(sorted(options.items()), quote_via=lambda s, *a, **k: quote(s, safe="/:@"))


def option_float(options: dict[str, str], name: str, default: float, url: str) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StoreUsageError(f"store URL option {name}={raw!r} is not a number", store=url) from None
    if value < 0:
        raise StoreUsageError(f"store URL option {name}={raw!r} is negative", store=url)
    return value


def option_int(options: dict[str, str], name: str, default: int, url: str) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StoreUsageError(f"store URL option {name}={raw!r} is not an integer", store=url) from None
    if value < 0:
        raise StoreUsageError(f"store URL option {name}={raw!r} is negative", store=url)
    return value


def configured_defaults(backend: str) -> dict[str, Any]:
    """Connection defaults for ``ceph`` or ``s3`` stores from the ``storage`` config section
    (``persona/configs/default.yaml``); a URL's own options win over these. Values the config
    leaves null are None (then the backend looks at the environment, then its library)."""
    import os

    from persona.config import get_config

    st = get_config().storage

    def path(p: str | None) -> str | None:
        return os.path.expanduser(p) if p else None

    if backend == "ceph":
        c = st.ceph
        return {"conf": path(c.conf), "id": c.user, "keyring": path(c.keyring),
                "timeout": float(c.connect_timeout), "op_timeout": float(c.op_timeout), "retries": st.retries}
    if backend == "s3":
        s = st.s3
        return {"endpoint": s.endpoint, "region": s.region, "profile": s.profile,
                "timeout": float(s.connect_timeout), "read_timeout": float(s.read_timeout), "retries": st.retries,
                "multipart_threshold": s.multipart_threshold_mb << 20, "part_size": s.part_size_mb << 20}
    raise ValueError(f"no configured defaults for store backend {backend!r}")


def retry(
    op: Callable[[], T],
    classify: Callable[[BaseException], StoreError | None],
    *,
    retries: int,
    deadline_s: float,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
    on_retry: Callable[[int, StoreError], None] | None = None,
) -> T:
    """``op()``, retried after transient failures.

    ``classify(exc)`` maps a backend exception to the StoreError to raise, or None to let the
    exception through unchanged (a missing key, a caller bug). An error whose ``transient`` is
    true is retried up to ``retries`` times with exponential backoff (full jitter), but never
    after ``deadline_s`` seconds from the first attempt.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return op()
        except Exception as exc:  # noqa: BLE001 - classified below
            err = classify(exc)
            if err is None:
                raise
            elapsed = time.monotonic() - start
            if not err.transient or attempt >= retries or elapsed >= deadline_s:
                raise err from exc
            delay = min(max_delay, base_delay * (2**attempt)) * (0.5 + random.random() / 2)
            delay = min(delay, max(0.0, deadline_s - elapsed))
            attempt += 1
            if on_retry is not None:
                on_retry(attempt, err)
            time.sleep(delay)
