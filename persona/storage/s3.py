"""S3Store: keys as objects under a prefix of an S3 bucket, through boto3 (``pip install 'persona-genomics[s3]'``).

URL::

    s3://BUCKET[/PREFIX][?endpoint=URL&region=R&profile=P&multipart_threshold=BYTES&part_size=BYTES
                          &timeout=S&read_timeout=S&retries=N&addressing=path|virtual]

Each key is the object ``PREFIX/key``. Reads are GETs, ranged where only part is wanted
(``Range: bytes=a-b``); puts are one PUT, or a multipart upload (parts sent in parallel) for an
object of ``multipart_threshold`` bytes or more (default 64 MiB, parts of ``part_size``, default
16 MiB); listings page through ListObjectsV2. :meth:`S3Store.put_if_absent` is a PUT with
``If-None-Match: *``: the server creates the object only if none is there and answers
412 Precondition Failed otherwise, atomically (AWS S3 since 2024, Ceph radosgw since long before:
tested against Ceph 16's radosgw with racing writers). A server that ignores the header cannot
give an atomic create through S3 at all: ``put_if_absent`` then raises
:class:`~persona.storage.base.StoreUsageError` (``conditional_create=off`` in the URL says so
up front) rather than pretend. ``copy`` is a server-side CopyObject (no bytes through this
machine, but the server still copies them: ``cheap_copy`` is False).

Credentials come from boto3's usual chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
(``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` or ``profile=``, ``~/.aws/credentials`` and
``~/.aws/config`` (``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_CONFIG_FILE``), instance roles. They are
never part of the URL. The endpoint of an S3-compatible server (radosgw, MinIO) comes from
``endpoint=`` in the URL, else the ``storage.s3`` config section, else ``PERSONA_S3_ENDPOINT``, else boto3's own ``AWS_ENDPOINT_URL_S3``
/ ``AWS_ENDPOINT_URL`` / config file; custom endpoints use path-style addressing.

Transient failures (throttling, 5xx, dropped connections) are retried with backoff by botocore's
"standard" retry mode, ``retries`` times; permission errors never are. One boto3 client per
process (per endpoint, region and profile) is shared by every store and thread.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

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
)

__all__ = ["S3Store"]

_OPTIONS = {
    "endpoint": "endpoint", "endpoint_url": "endpoint",
    "region": "region", "region_name": "region",
    "profile": "profile",
    "multipart_threshold": "multipart_threshold",
    "part_size": "part_size", "multipart_chunksize": "part_size",
    "timeout": "timeout", "connect_timeout": "timeout",
    "read_timeout": "read_timeout",
    "retries": "retries",
    "addressing": "addressing",
    "conditional_create": "conditional_create",
}

DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
DEFAULT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_RETRIES = 4

_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled",
           "InvalidToken", "ExpiredToken", "AccountProblem"}
_NO_BUCKET = {"NoSuchBucket"}

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _client(endpoint: str | None, region: str | None, profile: str | None, timeout: float, read_timeout: float,
            retries: int, addressing: str) -> Any:
    # boto3 resolves credentials when a client is made: a changed environment gets a new client
    creds = tuple(os.environ.get(v) for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                               "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"))
    key = (os.getpid(), endpoint, region, profile, timeout, read_timeout, retries, addressing, creds)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            try:
                session = boto3.session.Session(profile_name=profile, region_name=region)
            except botocore.exceptions.ProfileNotFound as exc:
                raise StoreUsageError(f"AWS profile {profile!r} is not configured") from exc
            config = Config(
                connect_timeout=timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "total_max_attempts": retries + 1},
                max_pool_connections=32,
                s3={"addressing_style": addressing},
                # S3-compatible servers (Ceph 16's radosgw) predate the flexible checksums
                # botocore sends by default since 1.36: only where the API requires them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = session.client("s3", endpoint_url=endpoint, config=config,
                                    region_name=region or session.region_name or "us-east-1")
            _clients[key] = client
        return client


class S3Store(Store):
    """Keys as objects ``prefix/key`` in ``bucket``; see the module docstring."""

    supports_partial_reads = True
    cheap_copy = False
    remote = True
    list_page_size = 1000  # keys per ListObjectsV2 page (S3's maximum)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        addressing: str | None = None,
        conditional_create: bool = True,
        read_only: bool = False,
        _url_options: dict[str, str] | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise StoreUsageError(f"bad S3 bucket name {bucket!r}", store=f"s3://{bucket}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        if part_size < MIN_PART_SIZE:
            raise StoreUsageError(f"S3 part_size must be at least {MIN_PART_SIZE} bytes", store=f"s3://{bucket}")
        self.multipart_threshold = max(1, multipart_threshold)
        self.part_size = part_size
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.conditional_create = conditional_create
        self.read_only = read_only
        if read_only:
            self.supports_writes = False
            self.supports_deletes = False
        self._url_options = dict(_url_options or {})
        if _url_options is None:
            for k, v in (("endpoint", endpoint), ("region", region), ("profile", profile)):
                if v is not None:
                    self._url_options[k] = v
            for k, v, d in (("multipart_threshold", multipart_threshold, DEFAULT_MULTIPART_THRESHOLD),
                            ("part_size", part_size, DEFAULT_PART_SIZE), ("retries", retries, DEFAULT_RETRIES)):
                if v != d:
                    self._url_options[k] = str(v)
            if timeout != DEFAULT_TIMEOUT:
                self._url_options["timeout"] = f"{timeout:g}"
            if read_timeout != DEFAULT_READ_TIMEOUT:
                self._url_options["read_timeout"] = f"{read_timeout:g}"
            if addressing is not None:
                self._url_options["addressing"] = addressing
            if not conditional_create:
                self._url_options["conditional_create"] = "off"
        self.endpoint = endpoint or os.environ.get("PERSONA_S3_ENDPOINT") or None
        self.region = region
        self.profile = profile
        addressing = addressing or ("path" if self.endpoint else "auto")
        if addressing not in ("path", "virtual", "auto"):
            raise StoreUsageError(f"S3 addressing must be path, virtual or auto, not {addressing!r}",
                                  store=self.url)
        self.addressing = addressing
        self._client = _client(self.endpoint, region, profile, timeout, read_timeout, retries, addressing)
        self._transfer = TransferConfig(multipart_threshold=self.multipart_threshold,
                                        multipart_chunksize=self.part_size, max_concurrency=4, use_threads=True)

    # ----------------------------------------------------------------- identity
    @property
    def url(self) -> str:
        path = quote(self.bucket, safe="") + ("/" + quote(self.prefix, safe="/") if self.prefix else "")
        return f"s3://{path}{encode_query(self._url_options)}"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Store:
        """``s3://BUCKET[/PREFIX][?options]``; keyword ``options`` override the query."""
        base, query = parse_query(url, _OPTIONS)
        rest = base[len("s3://"):] if base.startswith("s3://") else base
        bucket, _, prefix = rest.partition("/")
        bucket, prefix = unquote(bucket), unquote(prefix).strip("/")
        if not bucket:
            raise StoreUsageError("S3 store URL needs a bucket: s3://BUCKET/PREFIX", store=url)
        if prefix:
            validate_key(prefix)
        cond = query.get("conditional_create", "on").lower()
        if cond not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
            raise StoreUsageError(f"conditional_create={cond!r}: expected on or off", store=url)
        cfg = configured_defaults("s3")  # the storage.s3 config section, under the URL's options
        kwargs: dict[str, Any] = {
            "endpoint": query.get("endpoint") or cfg["endpoint"],
            "region": query.get("region") or cfg["region"],
            "profile": query.get("profile") or cfg["profile"],
            "multipart_threshold": option_int(query, "multipart_threshold", cfg["multipart_threshold"], url),
            "part_size": option_int(query, "part_size", cfg["part_size"], url),
            "timeout": option_float(query, "timeout", cfg["timeout"], url),
            "read_timeout": option_float(query, "read_timeout", cfg["read_timeout"], url),
            "retries": option_int(query, "retries", cfg["retries"], url),
            "addressing": query.get("addressing"),
            "conditional_create": cond in ("on", "1", "true", "yes"),
        }
        kwargs.update(options)
        return cls(bucket, prefix, _url_options=query if not options else None, **kwargs)

    def child(self, prefix: str) -> Store:
        self._check_open()
        validate_key(prefix)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._closed = False
        new.prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        return new

    # ------------------------------------------------------------------ errors
    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: BaseException, key: str | None) -> BaseException:
        """The Persona error for a botocore exception (a missing key becomes KeyError)."""
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            msg = err.get("Message") or code
            if code in _NO_BUCKET:
                return StoreNotFoundError(f"S3 bucket {self.bucket!r} does not exist", key=key, store=self.url)
            if code in _MISSING or status == 404:
                return KeyError(key)
            if code in _DENIED or status == 403:
                return StorePermissionError(f"S3 refused access ({code}: {msg}); check the credentials "
                                            "and the bucket policy", key=key, store=self.url)
            if status is not None and (status >= 500 or status == 429):
                return StoreError(f"S3 server error {status} ({code}: {msg})", key=key, store=self.url)
            return StoreRejectedError(f"S3 refused the request ({code}: {msg})", key=key, store=self.url)
        if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                            botocore.exceptions.ReadTimeoutError)):
            limit = self.read_timeout if isinstance(exc, botocore.exceptions.ReadTimeoutError) else self.timeout
            return StoreUnreachableError(f"no answer from the S3 endpoint {self.endpoint or 'AWS'} "
                                         f"within {limit:g} s ({exc})", key=key, store=self.url)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StorePermissionError("no S3 credentials found (AWS_ACCESS_KEY_ID / AWS_PROFILE / "
                                        "~/.aws/credentials)", key=key, store=self.url)
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return StoreError(f"S3 error: {exc}", key=key, store=self.url)
        return exc

    def _call(self, key: str | None, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    # ------------------------------------------------------------------- reads
    def _get(self, key: str) -> bytes:
        resp = self._call(key, self._client.get_object, Bucket=self.bucket, Key=self._name(key))
        with resp["Body"] as body:
            return body.read()

    def _get_range(self, key: str, start: int, length: int | None) -> bytes:
        rng = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._name(key), Range=rng)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "InvalidRange":  # starts at or past the end (or an empty object)
                return b""
            raise self._error(exc, key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, key) from exc
        with resp["Body"] as body:
            return body.read()

    def _head(self, key: str) -> dict[str, Any]:
        return self._call(key, self._client.head_object, Bucket=self.bucket, Key=self._name(key))

    def _exists(self, key: str) -> bool:
        try:
            self._head(key)
        except KeyError:
            return False
        return True

    def _size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def _list(self, prefix: str) -> Iterable[str]:
        full = self._name(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(Bucket=self.bucket, Prefix=full,
                                       PaginationConfig={"PageSize": self.list_page_size})
            for page in pages:
                out.extend(obj["Key"][cut:] for obj in page.get("Contents", ()))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            err = self._error(exc, prefix or None)
            if isinstance(err, KeyError):
                err = StoreNotFoundError(f"S3 bucket {self.bucket!r} does not exist", store=self.url)
            raise err from exc
        return out

    def _remove_temporaries(self, prefix: str, match: Any, min_age: float) -> list[str]:
        # A writer killed during a multipart put leaves the upload open: invisible, but its parts are
        # stored (and billed) until it is aborted.
        full = self._name(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        now = time.time()
        out: list[str] = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for up in page.get("Uploads", ()):
                    key = up["Key"][cut:]
                    if not up["Key"].startswith(full) or (match is not None and not match(key)):
                        continue
                    started = up.get("Initiated")
                    if started is not None and now - started.timestamp() < min_age:
                        continue
                    with contextlib.suppress(botocore.exceptions.ClientError):  # gone meanwhile
                        self._client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"],
                                                            UploadId=up["UploadId"])
                        out.append(key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            err = self._error(exc, prefix or None)
            raise (StoreError(f"S3 error listing uploads under {prefix!r}", store=self.url)
                   if isinstance(err, KeyError) else err) from exc
        return out

    # ------------------------------------------------------------------ writes
    def _put(self, key: str, data: memoryview) -> None:
        name = self._name(key)
        if len(data) < self.multipart_threshold:
            self._call(key, self._client.put_object, Bucket=self.bucket, Key=name, Body=data.tobytes())
            return
        # Multipart: parts uploaded in parallel, the object appears whole at CompleteMultipartUpload
        # (and the upload is aborted on failure).
        try:
            self._client.upload_fileobj(io.BytesIO(data), self.bucket, name, Config=self._transfer)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, key) from exc
        except Exception as exc:  # s3transfer wraps failures of its worker threads
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
                raise self._error(cause, key) from exc
            raise StoreError(f"S3 multipart upload failed: {exc}", key=key, store=self.url) from exc

    def _put_if_absent(self, key: str, data: memoryview) -> bool:
        if not self.conditional_create:
            raise StoreUsageError("put_if_absent is not supported by this server (conditional_create=off: "
                                  "no atomic create through its S3 API)", key=key, store=self.url)
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data.tobytes(), IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "PreconditionFailed" or status == 412:
                return False
            if code == "ConditionalRequestConflict" or status == 409:
                # AWS: a concurrent conditional write to the key is in flight; one of them wins.
                return False
            if code == "NotImplemented" or status == 501:
                raise StoreUsageError("put_if_absent is not supported by this server (no If-None-Match "
                                      "on PUT)", key=key, store=self.url) from exc
            raise self._error(exc, key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, key) from exc
        return True

    def _copy(self, src: str, dst: str) -> None:
        source = {"Bucket": self.bucket, "Key": self._name(src)}
        size = self._size(src)
        if size < 5 * 1024**3:
            self._call(src, self._client.copy_object, Bucket=self.bucket, Key=self._name(dst), CopySource=source)
            return
        try:  # CopyObject stops at 5 GiB: a multipart copy, still server-side
            self._client.copy(source, self.bucket, self._name(dst), Config=self._transfer)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, src) from exc

    def _delete(self, key: str) -> None:
        # S3's DELETE succeeds for a missing key too; the Store contract reports it.
        self._head(key)
        self._call(key, self._client.delete_object, Bucket=self.bucket, Key=self._name(key))

    # ------------------------------------------------------------------- admin
    def create_bucket(self) -> None:
        """Create this store's bucket (tests, demos); an existing bucket of ours is fine."""
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise self._error(exc, None) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, None) from exc
