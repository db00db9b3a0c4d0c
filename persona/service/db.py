"""The durable request table: one SQLite database (WAL, synchronous=FULL).

A row per request: its steps (request dicts), state, the step it is at, the summaries of the
steps it finished, timestamps, attempts and whether a cancel was asked. State changes are
committed before they are acted on or reported, so after a crash the table says which requests
were unfinished; :meth:`RequestTable.unfinished` lists them for the restart to resume. Live
progress (feeds and records of the running step) is kept in memory and written at each step's end.

Partition rows (:meth:`RequestTable.commit_partitions`, the coordinator's record of accepted
partition results) are committed at ``synchronous=NORMAL``: in WAL mode such a commit survives the
coordinator's crash (SIGKILL; the row is in the WAL file once the commit returns) but may be lost
with the machine's power, and it costs no fsync, which is most of a partition's cost at the
coordinator. Losing such a row is safe: the step's output is committed only by the dataset's
manifest in the store, so a restarted coordinator that lacks the row runs that partition again and
the unrecorded attempt's files are removed as unreferenced. Request rows stay at FULL.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from persona.errors import PersonaError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    label TEXT NOT NULL DEFAULT '',
    kinds TEXT NOT NULL,
    steps TEXT NOT NULL,
    state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    feeds_done INTEGER NOT NULL DEFAULT 0,
    records_done INTEGER NOT NULL DEFAULT 0,
    records_total_done INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    summaries TEXT NOT NULL DEFAULT '[]',
    submitted_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state);
CREATE TABLE IF NOT EXISTS partitions (
    step_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (step_id, idx)
);
"""

_COLUMNS = ("label", "state", "step", "feeds_done", "records_done", "records_total_done", "error", "summaries",
            "started_at", "finished_at", "attempts", "cancel_requested")


class RequestTable:
    """Thread-safe access to the request table at ``path`` (created with its directory)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                       timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            # partition rows: their own connection at synchronous=NORMAL (see the module docstring);
            # every use of either connection holds self._lock, so they never wait on each other
            self._pdb = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
            self._pdb.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise PersonaError(f"cannot open the request table {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._pdb.close()
            self._db.close()

    @staticmethod
    def _row(r: sqlite3.Row | None) -> dict[str, Any] | None:
        if r is None:
            return None
        d = dict(r)
        d["steps"] = json.loads(d["steps"])
        d["summaries"] = json.loads(d["summaries"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return d

    def insert(self, request_id: str, steps: list[dict[str, Any]], *, label: str = "",
               idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Add a queued request; ``(row, False)``, or ``(existing row, True)`` for a known key."""
        with self._lock:
            if idempotency_key:
                r = self._db.execute("SELECT * FROM requests WHERE idempotency_key=?", (idempotency_key,)).fetchone()
                if r is not None:
                    return self._row(r), True  # type: ignore[return-value]
            kinds = "+".join(s["kind"] for s in steps)
            self._db.execute(
                "INSERT INTO requests (id, idempotency_key, label, kinds, steps, state, submitted_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (request_id, idempotency_key or None, label, kinds, json.dumps(steps), time.time()))
            r = self._db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
            return self._row(r), False  # type: ignore[return-value]

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._row(self._db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone())

    def update(self, request_id: str, **fields: Any) -> None:
        bad = set(fields) - set(_COLUMNS)
        if bad:
            raise ValueError(f"unknown request columns {sorted(bad)}")
        if "summaries" in fields:
            fields["summaries"] = json.dumps(fields["summaries"], default=str)
        if "cancel_requested" in fields:
            fields["cancel_requested"] = int(bool(fields["cancel_requested"]))
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE requests SET {sets} WHERE id=?", (*fields.values(), request_id))

    def list(self, *, states: Iterable[str] = (), kind: str = "", limit: int = 50,
             before_seq: int | None = None) -> list[dict[str, Any]]:
        """Newest first; ``before_seq``: the page after the row of that sequence number."""
        where, args = [], []  # type: ignore[var-annotated]
        states = list(states)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if kind:
            where.append("('+' || kinds || '+') LIKE ?")
            args.append(f"%+{kind}+%")
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        sql = "SELECT * FROM requests" + (f" WHERE {' AND '.join(where)}" if where else "") + \
              " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, int(limit))).fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def unfinished(self) -> list[dict[str, Any]]:
        """Queued and running requests, oldest first (what a restart resumes)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM requests WHERE state IN ('queued', 'running') "
                                    "ORDER BY seq").fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    # -- partitions (the coordinator's global gates) ------------------------------------------
    def commit_partition(self, step_id: str, index: int, attempt: str, result: Mapping[str, Any]) -> bool:
        """Record partition ``index`` of ``step_id`` as done by ``attempt``; False when another
        attempt was recorded first (a duplicate result, discarded)."""
        return self.commit_partitions([(step_id, index, attempt, result)])[0]

    def commit_partitions(self, rows: list[tuple[str, int, str, Mapping[str, Any]]]) -> list[bool]:
        """:meth:`commit_partition` for many ``(step_id, index, attempt, result)`` in one transaction
        (the coordinator's group commit), at ``synchronous=NORMAL`` (see the module docstring)."""
        out = []
        data = [(step_id, index, attempt, json.dumps(result, default=str)) for step_id, index, attempt, result in rows]
        db = self._pdb
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                for row in data:
                    cur = db.execute("INSERT OR IGNORE INTO partitions (step_id, idx, attempt, result) "
                                     "VALUES (?, ?, ?, ?)", row)
                    out.append(cur.rowcount == 1)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return out

    def partitions(self, step_id: str) -> dict[int, tuple[str, dict[str, Any]]]:
        """The committed partitions of ``step_id``: ``{index: (attempt, result)}``."""
        with self._lock:
            rows = self._db.execute("SELECT idx, attempt, result FROM partitions WHERE step_id=?",
                                    (step_id,)).fetchall()
        return {r[0]: (r[1], json.loads(r[2])) for r in rows}

    def drop_partitions(self, step_id: str) -> None:
        """Forget ``step_id``'s partitions (its step committed, failed or was cancelled)."""
        with self._lock:
            self._db.execute("DELETE FROM partitions WHERE step_id=?", (step_id,))

    def counts(self) -> Mapping[tuple[str, str], int]:
        """``{(kinds, state): n}`` over the whole table (the requests gauge)."""
        with self._lock:
            rows = self._db.execute("SELECT kinds, state, COUNT(*) FROM requests GROUP BY kinds, state").fetchall()
        return {(r[0], r[1]): r[2] for r in rows}
