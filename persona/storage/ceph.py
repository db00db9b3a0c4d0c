"""CephStore: keys as RADOS objects in one pool and namespace, through python-rados (librados).

URL::

    ceph://POOL[/NAMESPACE[/PREFIX...]][?conf=PATH&id=USER&keyring=PATH&timeout=S&op_timeout=S&retries=N]

Each key is one object named ``PREFIX/key`` in namespace ``NAMESPACE`` of pool ``POOL`` (thesis
§6.1: a namespace per dataset, one object per chunk file and one for the manifest). Whole puts are
one ``write_full``; reads are ranged ``read`` calls (a chunk's header or a part of it without the
rest); listing walks the namespace. :meth:`CephStore.put_if_absent` is one compound RADOS write
operation -- create-exclusive plus ``write_full`` -- so the OSD applies it atomically: exactly one
of any number of racing writers (threads, processes, machines) creates the object and no reader sees
it half-written. :meth:`CephStore.get_async` starts an ``aio_read`` and returns a future (prefetch).
RADOS has no server-side copy in python-rados, so :meth:`copy` reads and writes the bytes
(``cheap_copy`` is False).

Connecting. Options come from the URL query, else the ``storage.ceph`` config section, else the
environment, else librados' defaults:

* ``conf``: the cluster's ceph.conf (``PERSONA_CEPH_CONF``, ``CEPH_CONF``, else /etc/ceph/ceph.conf);
* ``id``: the cephx user, ``persona`` or ``client.persona`` (``PERSONA_CEPH_ID``, else ``admin``);
* ``keyring``: that user's keyring (``PERSONA_CEPH_KEYRING``, else the ``keyring`` of ceph.conf);
* ``mon_host``: monitor addresses, instead of or over the conf file's;
* ``timeout``: seconds to reach the monitors and authenticate (default 10);
* ``op_timeout``: seconds an object operation may take before it fails (default 60), so a stopped
  OSD gives an error instead of a hang; ``retries``: how often transient failures (timeouts,
  EAGAIN/EBUSY, a lost connection) are retried with backoff (default 4, within ``op_timeout``).

``CEPH_ARGS`` is honoured as by the ``ceph`` tools. One connection per process (per set of
connection options) is shared by every store and thread; a forked child makes its own.

Errors: a missing pool is :class:`~persona.storage.remote.StoreNotFoundError`, refused
credentials or caps :class:`~persona.storage.remote.StorePermissionError`, no answer within the
timeout :class:`~persona.storage.remote.StoreUnreachableError`; each names the key and URL.
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import rados

from persona.errors import StoreError
from persona.storage.base import Store, StoreUsageError, validate_key
from persona.storage.remote import (
    StoreNotFoundError,
    StorePermissionError,
    StoreRejectedError,
    StoreUnreachableError,
    configured_defaults,
    encode_query,
    option_float,
    option_int,
    parse_query,
    retry,
)

__all__ = ["CephStore", "shutdown_connections"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_OPTIONS = {
    "conf": "conf", "conffile": "conf", "conf_file": "conf",
    "id": "id", "user": "id", "name": "id",
    "keyring": "keyring",
    "mon_host": "mon_host",
    "timeout": "timeout", "connect_timeout": "timeout",
    "op_timeout": "op_timeout",
    "retries": "retries",
}

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_OP_TIMEOUT = 60.0
DEFAULT_RETRIES = 4

_TRANSIENT = {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ESHUTDOWN, errno.ENOTCONN,
              errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH}
_DENIED = {errno.EACCES, errno.EPERM}
_REJECTED = {errno.EFBIG, errno.E2BIG, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EINVAL,
             errno.EOPNOTSUPP, errno.EROFS}


# ------------------------------------------------------------------ shared connections
class _Conn:
    """One connected ``rados.Rados`` and its open pools (ioctx per pool and namespace)."""

    def __init__(self, cluster: rados.Rados) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self.ioctxs: dict[tuple[str, str], rados.Ioctx] = {}


_conns: dict[tuple[Any, ...], _Conn] = {}
_conns_lock = threading.Lock()
_conns_pid = os.getpid()


def _forget_after_fork() -> None:
    # librados' threads do not survive fork(): the child must not touch (or shut down) the
    # parent's handles, only forget them and connect anew.
    global _conns_pid
    if _conns_pid != os.getpid():
        _conns.clear()
        _conns_pid = os.getpid()


def shutdown_connections() -> None:
    """Close this process's cluster connections (open stores reconnect on their next call)."""
    with _conns_lock:
        _forget_after_fork()
        conns = list(_conns.values())
        _conns.clear()
    for conn in conns:
        for io in conn.ioctxs.values():
            try:
                io.close()
            except rados.Error:
                pass
        try:
            conn.cluster.shutdown()
        except rados.Error:
            pass


atexit.register(shutdown_connections)


def _errno_of(exc: BaseException) -> int | None:
    return getattr(exc, "errno", None) if isinstance(exc, rados.Error) else None


class CephStore(Store):
    """Keys as RADOS objects in ``pool``/``namespace`` (under ``prefix``); see the module docs."""

    supports_partial_reads = True
    cheap_copy = False
    remote = True

    def __init__(
        self,
        pool: str,
        namespace: str = "",
        prefix: str = "",
        *,
        conf: str | None = None,
        id: str | None = None,  # noqa: A002 - the ceph tools' name for it
        keyring: str | None = None,
        mon_host: str | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        read_only: bool = False,
        _url_options: dict[str, str] | None = None,
    ) -> None:
        if not pool or "/" in pool:
            raise StoreUsageError(f"bad Ceph pool name {pool!r}", store=f"ceph://{pool}")
        self.pool = pool
        self.namespace = namespace
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.read_only = read_only
        if read_only:
            self.supports_writes = False
            self.supports_deletes = False
        self.timeout = timeout
        self.op_timeout = op_timeout
        self.retries = retries
        # Explicit arguments win over the environment; the URL shows only what was explicit.
        self._url_options = dict(_url_options or {})
        if _url_options is None:
            for k, v in (("conf", conf), ("id", id), ("keyring", keyring), ("mon_host", mon_host)):
                if v is not None:
                    self._url_options[k] = v
            if timeout != DEFAULT_CONNECT_TIMEOUT:
                self._url_options["timeout"] = f"{timeout:g}"
            if op_timeout != DEFAULT_OP_TIMEOUT:
                self._url_options["op_timeout"] = f"{op_timeout:g}"
            if retries != DEFAULT_RETRIES:
                self._url_options["retries"] = str(retries)
        self.conf = conf or os.environ.get("PERSONA_CEPH_CONF") or os.environ.get("CEPH_CONF") or None
        user = id or os.environ.get("PERSONA_CEPH_ID") or None
        self.user = user[len("client."):] if user and user.startswith("client.") else user
        self.keyring = keyring or os.environ.get("PERSONA_CEPH_KEYRING") or None
        self.mon_host = mon_host
        for what, path in (("conf", self.conf), ("keyring", self.keyring)):
            if path is not None and not os.path.isfile(path):
                raise StoreUsageError(f"Ceph {what} file {path!r} does not exist", store=self.url)
        self._conn_key = (self.conf, self.user, self.keyring, self.mon_host, self.timeout, self.op_timeout)
        self._ioctx = self._open_ioctx()  # connect now: a bad cluster or pool fails at open

    # ----------------------------------------------------------------- identity
    @property
    def url(self) -> str:
        path = quote(self.pool, safe="")
        if self.namespace or self.prefix:  # ceph://pool//prefix: a prefix in the default namespace
            path += "/" + quote(self.namespace, safe="")
        if self.prefix:
            path += "/" + quote(self.prefix, safe="/")
        return f"ceph://{path}{encode_query(self._url_options)}"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> CephStore:
        """``ceph://POOL[/NAMESPACE[/PREFIX]][?options]``; keyword ``options`` override the query."""
        base, query = parse_query(url, _OPTIONS)
        rest = base[len("ceph://"):] if base.startswith("ceph://") else base
        parts = [unquote(p) for p in rest.split("/")]
        while parts and parts[-1] == "":
            parts.pop()
        if not parts or not parts[0]:
            raise StoreUsageError("Ceph store URL needs a pool: ceph://POOL/NAMESPACE", store=url)
        pool = parts[0]
        namespace = parts[1] if len(parts) > 1 else ""
        prefix = "/".join(parts[2:])
        if prefix:
            validate_key(prefix)
        cfg = configured_defaults("ceph")  # the storage.ceph config section, under the URL's options
        kwargs: dict[str, Any] = {
            "conf": query.get("conf") or cfg["conf"],
            "id": query.get("id") or cfg["id"],
            "keyring": query.get("keyring") or cfg["keyring"],
            "mon_host": query.get("mon_host"),
            "timeout": option_float(query, "timeout", cfg["timeout"], url),
            "op_timeout": option_float(query, "op_timeout", cfg["op_timeout"], url),
            "retries": option_int(query, "retries", cfg["retries"], url),
        }
        kwargs.update(options)
        return cls(pool, namespace, prefix, _url_options=query if not options else None, **kwargs)

    def child(self, prefix: str) -> Store:
        self._check_open()
        validate_key(prefix)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._closed = False
        new.prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        return new

    # --------------------------------------------------------------- connection
    def _connect(self) -> _Conn:
        with _conns_lock:
            _forget_after_fork()
            conn = _conns.get(self._conn_key)
            if conn is not None:
                return conn
            conf: dict[str, str] = {
                "client_mount_timeout": f"{self.timeout:g}",
                "rados_mon_op_timeout": f"{self.timeout:g}",
                "rados_osd_op_timeout": f"{self.op_timeout:g}",
            }
            if os.environ.get("PERSONA_CEPH_DEBUG", "") in ("", "0"):
                conf["err_to_stderr"] = "false"  # our errors say what went wrong
                conf["log_to_stderr"] = "false"
            if self.keyring:
                conf["keyring"] = self.keyring
            cluster = rados.Rados(rados_id=self.user, conf=conf) if self.user else rados.Rados(conf=conf)
            try:
                if self.conf:
                    cluster.conf_read_file(self.conf)
                elif not self.mon_host:
                    cluster.conf_read_file()  # the default search path, CEPH_CONF
                cluster.conf_parse_env()  # CEPH_ARGS
                for k, v in conf.items():  # ours win over the conf file
                    cluster.conf_set(k, v)
                if self.mon_host:
                    cluster.conf_set("mon_host", self.mon_host)
                cluster.connect(timeout=max(1, int(round(self.timeout))))
            except rados.Error as exc:
                try:
                    cluster.shutdown()
                except rados.Error:
                    pass
                raise self._connect_error(exc) from exc
            conn = _conns[self._conn_key] = _Conn(cluster)
            return conn

    def _connect_error(self, exc: rados.Error) -> StoreError:
        code = _errno_of(exc)
        who = f"client.{self.user or 'admin'}"
        if code in (errno.ETIMEDOUT, errno.EINTR):
            return StoreUnreachableError(
                f"cannot reach the Ceph cluster within {self.timeout:g} s (monitors down or unreachable? "
                f"conf={self.conf or 'default'})", store=self.url)
        if code in _DENIED:
            return StorePermissionError(f"the Ceph cluster refused {who}'s credentials (wrong key or user)",
                                        store=self.url)
        if code == errno.ENOENT:
            return StorePermissionError(
                f"no usable cephx key for {who} (keyring={self.keyring or 'from ceph.conf'}), "
                "or no monitors configured", store=self.url)
        return StoreError(f"cannot connect to the Ceph cluster: {exc}", store=self.url)

    def _open_ioctx(self) -> rados.Ioctx:
        conn = self._connect()
        key = (self.pool, self.namespace)
        with conn.lock:
            io = conn.ioctxs.get(key)
            if io is not None:
                return io
            try:
                io = conn.cluster.open_ioctx(self.pool)
            except rados.ObjectNotFound as exc:
                raise StoreNotFoundError(f"Ceph pool {self.pool!r} does not exist", store=self.url) from exc
            except rados.Error as exc:
                err = self._classify(exc, None)
                raise (err or StoreError(str(exc), store=self.url)) from exc
            io.set_namespace(self.namespace)
            conn.ioctxs[key] = io
            return io

    def _io(self) -> rados.Ioctx:
        if _conns_pid != os.getpid() or self._ioctx is None:
            self._ioctx = self._open_ioctx()
        return self._ioctx

    # ------------------------------------------------------------------ errors
    def _oid(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _classify(self, exc: BaseException, key: str | None, writing: bool = False) -> StoreError | None:
        if not isinstance(exc, rados.Error) or isinstance(exc, rados.ObjectExists):
            return None
        code = _errno_of(exc)
        if isinstance(exc, rados.ObjectNotFound) or code == errno.ENOENT:
            if writing:
                return StoreNotFoundError(f"Ceph pool {self.pool!r} is gone", key=key, store=self.url)
            return None  # a missing key: the caller maps it
        if code in _DENIED:
            return StorePermissionError(
                f"permission denied: client.{self.user or 'admin'} may not "
                f"{'write' if writing else 'read'} pool {self.pool!r} (its cephx caps)", key=key, store=self.url)
        if code == errno.ETIMEDOUT:
            return StoreUnreachableError(
                f"Ceph operation timed out after {self.op_timeout:g} s (OSDs down?)", key=key, store=self.url)
        if code in _TRANSIENT or isinstance(exc, rados.ConnectionShutdown):
            return StoreError(f"Ceph I/O error: {exc}", key=key, store=self.url)
        if code in _REJECTED:
            what = {errno.EFBIG: "object too large for the cluster (osd_max_object_size)",
                    errno.E2BIG: "write too large for the cluster (osd_max_write_size)",
                    errno.ENOSPC: "the cluster is full", errno.EDQUOT: "the pool's quota is exhausted"}
            return StoreRejectedError(f"Ceph refused the operation: {what.get(code, exc)}", key=key, store=self.url)
        return StoreRejectedError(f"Ceph error: {exc}", key=key, store=self.url)

    def _run(self, key: str | None, op: Callable[[], T], writing: bool = False) -> T:
        def classify(exc: BaseException) -> StoreError | None:
            return self._classify(exc, key, writing)

        return retry(op, classify, retries=self.retries, deadline_s=max(self.op_timeout, 1.0),
                     on_retry=lambda n, e: log.debug("retry %d after %s", n, e))

    # ------------------------------------------------------------------- reads
    def _stat_size(self, key: str) -> int:
        oid = self._oid(key)
        try:
            return self._run(key, lambda: self._io().stat(oid))[0]
        except rados.ObjectNotFound as exc:
            raise KeyError(key) from exc

    def _read(self, key: str, length: int, offset: int) -> bytes:
        oid = self._oid(key)
        try:
            return self._run(key, lambda: self._io().read(oid, length, offset))
        except rados.ObjectNotFound as exc:
            raise KeyError(key) from exc

    def _get(self, key: str) -> bytes:
        size = self._stat_size(key)
        while True:
            # One read op is atomic against write_full: asking for one byte more than the stat said
            # tells a whole object (shorter than asked) from one replaced by a longer one meanwhile.
            data = self._read(key, size + 1, 0)
            if len(data) <= size:
                return data
            size = max(size * 2, self._stat_size(key))

    def _get_range(self, key: str, start: int, length: int | None) -> bytes:
        if length is None:
            size = self._stat_size(key)
            if start >= size:
                return b""
            length = size - start
            # A range to the end of an object that grew meanwhile: the stat's length is what we read.
        return self._read(key, length, start)

    def get_async(self, key: str, start: int = 0, length: int | None = None) -> Future[bytes]:
        """Start reading bytes ``[start, start+length)`` of ``key`` (to the end when None) with
        ``aio_read``; the future's result is the bytes, or the same error :meth:`get_range` raises.

        The read runs inside librados while the caller goes on (prefetch of the next chunk).
        """
        self._check_open()
        validate_key(key)
        if start < 0 or (length is not None and length < 0):
            raise StoreUsageError(f"bad range start={start} length={length}", key=key, store=self.url)
        fut: Future[bytes] = Future()
        fut.set_running_or_notify_cancel()
        oid = self._oid(key)
        try:
            if length is None:
                size = self._stat_size(key)
                length = max(0, size - start)
            if length == 0:
                if not self._exists(key):
                    raise KeyError(key)
                fut.set_result(b"")
                return fut
        except KeyError:
            fut.set_exception(self._missing(key))
            return fut
        except StoreError as exc:
            fut.set_exception(exc)
            return fut

        def done(completion: Any, data: bytes | None) -> None:
            # Runs on a librados thread: never raise from here.
            try:
                rv = completion.get_return_value()
                if rv >= 0:
                    # python-rados hands over its whole buffer when nothing was read: trust rv only
                    fut.set_result(bytes(data[:rv]) if data is not None and rv else b"")
                elif rv == -errno.ENOENT:
                    fut.set_exception(self._missing(key))
                else:
                    err = self._classify(rados.OSError(f"aio_read failed: {os.strerror(-rv)}", errno=-rv), key)
                    fut.set_exception(err or StoreError(f"aio_read failed: {os.strerror(-rv)}", key=key,
                                                        store=self.url))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                if not fut.done():
                    fut.set_exception(exc)

        try:
            self._io().aio_read(oid, length, start, done)
        except rados.Error as exc:
            fut.set_exception(self._classify(exc, key) or StoreError(str(exc), key=key, store=self.url))
        return fut

    def _exists(self, key: str) -> bool:
        try:
            self._stat_size(key)
        except KeyError:
            return False
        return True

    def _size(self, key: str) -> int:
        return self._stat_size(key)

    def _list(self, prefix: str) -> Iterable[str]:
        full = self._oid(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0

        def walk() -> list[str]:
            return [o.key for o in self._io().list_objects() if o.key.startswith(full)]

        return [k[cut:] for k in self._run(None, walk)]

    # ------------------------------------------------------------------ writes
    def _put(self, key: str, data: memoryview) -> None:
        oid = self._oid(key)
        payload = data.tobytes()  # python-rados takes bytes only (and the caller may reuse its buffer)
        self._run(key, lambda: self._io().write_full(oid, payload), writing=True)

    def _put_if_absent(self, key: str, data: memoryview) -> bool:
        oid = self._oid(key)
        payload = data.tobytes()
        tries = 0

        def create() -> None:
            nonlocal tries
            tries += 1
            io = self._io()
            # One compound op: the OSD creates (exclusive) and writes atomically, or does neither.
            with rados.WriteOpCtx() as op:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                op.write_full(payload)
                io.operate_write_op(op, oid)

        try:
            self._run(key, create, writing=True)
        except rados.ObjectExists:
            if tries > 1:
                # An earlier try may have been applied and only its reply lost: then the object
                # is ours (claims carry the writer's attempt id and time, so equal bytes mean ours).
                try:
                    return self._get(key) == payload
                except KeyError:
                    return False
            return False
        return True

    def _copy(self, src: str, dst: str) -> None:
        data = self._get(src)
        self._put(dst, memoryview(data))

    def _delete(self, key: str) -> None:
        oid = self._oid(key)
        try:
            self._run(key, lambda: self._io().remove_object(oid), writing=False)
        except rados.ObjectNotFound as exc:
            raise KeyError(key) from exc

    def _close(self) -> None:
        self._ioctx = None  # the ioctx and connection are shared with other stores of the process
