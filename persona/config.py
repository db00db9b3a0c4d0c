"""Persona's configuration: layered YAML + environment, parsed into frozen dataclasses.

Layers, each overriding the one before (see ``persona/configs/default.yaml``,
which documents every key):

1. packaged defaults, ``persona/configs/default.yaml``;
2. one user YAML file: the ``path`` argument (``--config``), else
   ``$PERSONA_CONFIG``, else ``$XDG_CONFIG_HOME/persona/persona.yaml``
   (``~/.config/...``) when it exists;
3. environment variables ``PERSONA_<SECTION>__<KEY>`` (``__`` separates
   levels; values are read as YAML scalars, e.g. ``PERSONA_AGD__ZSTD_LEVEL=9``);
4. explicit overrides, nested (``{"agd": {"zstd_level": 9}}``) or dotted
   (``{"agd.zstd_level": 9}``).

Every value is checked against the dataclass schema below. An unknown key or
a bad value raises :class:`~persona.errors.ConfigError` whose message starts
with the key path and names the layer it came from, e.g.
``agd.zstd_level: expected int, got 'x' (source=env PERSONA_AGD__ZSTD_LEVEL)``.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import os
import threading
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from persona.errors import ConfigError

__all__ = [
    "AgdConfig",
    "AlignConfig",
    "CephStorageConfig",
    "Config",
    "ExportConfig",
    "ImportConfig",
    "LoggingConfig",
    "MarkdupConfig",
    "PtfConfig",
    "ReferenceCacheConfig",
    "S3StorageConfig",
    "ServiceConfig",
    "SortConfig",
    "StorageConfig",
    "get_config",
    "load_config",
    "resolve_threads",
    "set_config",
    "user_config_path",
]

ENV_PREFIX = "PERSONA_"


def _key(*, choices: tuple[str, ...] = (), min: int | None = None, max: int | None = None, name: str = "") -> Any:
    """A schema field: allowed choices (matched case-insensitively), numeric bounds, YAML name."""
    return field(metadata={"choices": choices, "min": min, "max": max, "name": name})


@dataclass(frozen=True)
class AgdConfig:
    compression: str = _key(choices=("zstd", "gzip", "none"))
    zstd_level: int | None = _key(min=1, max=22)
    gzip_level: int | None = _key(min=0, max=9)
    chunk_size: int = _key(min=1)


@dataclass(frozen=True)
class CephStorageConfig:
    """Defaults for ``ceph://`` stores; a store URL's own ``?conf=&id=&keyring=...`` win."""

    conf: str | None = _key()
    user: str | None = _key()
    keyring: str | None = _key()
    connect_timeout: int = _key(min=1)
    op_timeout: int = _key(min=1)


@dataclass(frozen=True)
class S3StorageConfig:
    """Defaults for ``s3://`` stores; a store URL's own ``?endpoint=&region=...`` win."""

    endpoint: str | None = _key()
    region: str | None = _key()
    profile: str | None = _key()
    connect_timeout: int = _key(min=1)
    read_timeout: int = _key(min=1)
    multipart_threshold_mb: int = _key(min=5)
    part_size_mb: int = _key(min=5)


@dataclass(frozen=True)
class ReferenceCacheConfig:
    """The compute node's local cache of reference indexes fetched from a store."""

    dir: str | None = _key()
    max_mb: int = _key(min=1)


@dataclass(frozen=True)
class StorageConfig:
    default_url: str | None = _key()
    retries: int = _key(min=0)
    read_block_kb: int = _key(min=4)
    read_prefetch: int = _key(min=1)
    ceph: CephStorageConfig = _key()
    s3: S3StorageConfig = _key()
    reference_cache: ReferenceCacheConfig = _key()


@dataclass(frozen=True)
class ImportConfig:
    threads: int = _key(min=0)
    queue_depth: int = _key(min=1)


@dataclass(frozen=True)
class ExportConfig:
    threads: int = _key(min=0)
    bgzf_level: int = _key(min=0, max=9)
    sorted_extras_memory_mb: int = _key(min=1)


@dataclass(frozen=True)
class SnapConfig:
    """Parameters of the ``snap`` aligner (SNAP's defaults; the seed length is the index's preset)."""

    max_dist: int = _key(min=0, max=60)
    max_dist_paired: int = _key(min=0, max=60)
    max_seeds: int = _key(min=1)
    max_seeds_paired: int = _key(min=1)
    max_hits: int = _key(min=1)
    extra_depth: int = _key(min=0)
    min_spacing: int = _key(min=0)
    max_spacing: int = _key(min=0)
    min_read_len: int = _key(min=0)
    secondary_edit_delta: int = _key(min=0, max=60)
    index_memory_mb: int = _key(min=1)


@dataclass(frozen=True)
class AlignConfig:
    aligner: str = _key(choices=("minimap2", "mappy", "minibwa", "snap"))
    threads: int = _key(min=0)
    work_item_reads: int = _key(min=1)
    preset: str = _key()
    references_url: str = _key()
    snap: SnapConfig = _key()


@dataclass(frozen=True)
class SortConfig:
    group_chunks: int = _key(min=1)
    run_block: int = _key(min=0)
    merge_memory: int = _key(min=1 << 20)
    prefetch: int = _key(min=1)


@dataclass(frozen=True)
class MarkdupConfig:
    window: int = _key(min=0)


@dataclass(frozen=True)
class PtfConfig:
    default_capacity: int = _key(min=1)


@dataclass(frozen=True)
class ServiceConfig:
    listen: str = _key()
    metrics_listen: str | None = _key()
    token: str | None = _key()
    lease_seconds: int = _key(min=1)
    partition_size: int = _key(min=1)
    worker_listen: str = _key()
    worker_token: str | None = _key()
    worker_credits: int = _key(min=1)
    max_open_requests: int = _key(min=1)
    speculate_factor: float = _key()
    speculate_min_seconds: float = _key()
    db_path: str = _key()
    roots: str | None = _key()
    tls_cert: str | None = _key()
    tls_key: str | None = _key()
    tls_ca: str | None = _key()
    worker_tls_cert: str | None = _key()
    worker_tls_key: str | None = _key()
    worker_tls_ca: str | None = _key()


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _key(choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``import`` is a keyword, so that section is ``import_``."""

    agd: AgdConfig
    storage: StorageConfig
    import_: ImportConfig = _key(name="import")
    export: ExportConfig = _key()
    align: AlignConfig = _key()
    ptf: PtfConfig = _key()
    sort: SortConfig = _key()
    markdup: MarkdupConfig = _key()
    logging: LoggingConfig = _key()
    service: ServiceConfig = _key()
    # Which layers produced this config, for `persona config show`; not part of equality.
    sources: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: Mapping[str, str] | None = None) -> Config:
        """Validate a complete nested mapping (every section and key) into a Config."""
        cfg: Config = _build(cls, data, (), origin or {})
        return cfg

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict with YAML names (``import``, not ``import_``)."""
        return {
            _yaml_name(f): dataclasses.asdict(getattr(self, f.name)) for f in _schema_fields(Config)
        }

    def to_yaml(self) -> str:
        """YAML that :func:`load_config` reads back to an equal Config; sources as a comment."""
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        header = f"# sources: {', '.join(self.sources)}\n" if self.sources else ""
        return header + body

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with ``overrides`` (nested or dotted keys) applied and validated."""
        merged = self.to_dict()
        origin: dict[str, str] = {}
        _merge(merged, _expand_dotted(overrides, "override"), "override", origin, ())
        cfg = Config.from_dict(merged, origin)
        return dataclasses.replace(cfg, sources=(*self.sources, "override"))


# --------------------------------------------------------------------- schema
def _schema_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.name != "sources"]


def _yaml_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("name") or f.name


_hints_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _hints_cache:
        _hints_cache[cls] = typing.get_type_hints(cls)
    return _hints_cache[cls]


def _build(cls: type, data: Any, path: tuple[str, ...], origin: Mapping[str, str]) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking every key; errors name the path."""
    where = ".".join(path)
    if not isinstance(data, Mapping):
        raise _error(f"{where or 'config'}: expected a mapping, got {data!r}", path, origin)
    fields = {_yaml_name(f): f for f in _schema_fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            what = "section" if cls is Config else "key"
            raise _error(f"{_join(path, str(key))}: unknown {what} (known: {known})", (*path, str(key)), origin)
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = (*path, name)
        if name not in data:
            raise _error(f"{'.'.join(sub)}: missing", sub, origin)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            values[f.name] = _build(tp, data[name], sub, origin)  # type: ignore[arg-type]
        else:
            values[f.name] = _check(data[name], tp, f.metadata, sub, origin)
    return cls(**values)


def _check(value: Any, tp: Any, meta: Mapping[str, Any], path: tuple[str, ...], origin: Mapping[str, str]) -> Any:
    allowed = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    if isinstance(value, _EnvText):
        value = _parse_env(value, allowed)
    where = ".".join(path)
    if value is None and type(None) in allowed:
        return None
    base = next(t for t in allowed if t is not type(None))
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if not ok:
        raise _error(f"{where}: expected {_type_name(allowed)}, got {value!r}", path, origin)
    if meta.get("choices"):
        for choice in meta["choices"]:
            if value.lower() == choice.lower():
                return choice
        raise _error(f"{where}: expected one of {', '.join(meta['choices'])}, got {value!r}", path, origin)
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise _error(f"{where}: must be {bounds}, got {value!r}", path, origin)
    if base is str and not value.strip():
        raise _error(f"{where}: must not be empty", path, origin)
    return value


def _type_name(allowed: tuple[Any, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in allowed)


def _join(path: tuple[str, ...], key: str) -> str:
    return ".".join((*path, key))


def _error(message: str, path: tuple[str, ...], origin: Mapping[str, str]) -> ConfigError:
    # The most specific layer that set this key (or one of its parents).
    for n in range(len(path), 0, -1):
        source = origin.get(".".join(path[:n]))
        if source:
            return ConfigError(message, source=source)
    return ConfigError(message)


# --------------------------------------------------------------------- layers
class _EnvText(str):
    """Raw text of an environment variable; typed by the schema when validated."""


def _parse_env(text: _EnvText, allowed: tuple[Any, ...]) -> Any:
    try:
        parsed = yaml.safe_load(str(text)) if text.strip() else None
    except yaml.YAMLError:
        parsed = str(text)
    if isinstance(parsed, (dict, list)):
        parsed = str(text)
    # A string key keeps the text as written: a token "0123" or "yes" must not become 83 or True.
    if str in allowed and parsed is not None:
        return str(text)
    return parsed


def _expand_dotted(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{key!r}: config keys must be strings", source=source)
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with a scalar set for {part}", source=source)
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(_expand_dotted(value, source))
        else:
            node[leaf] = _expand_dotted(value, source) if isinstance(value, Mapping) else value
    return out


def _merge(
    into: dict[str, Any], layer: Mapping[str, Any], source: str | Mapping[str, str], origin: dict[str, str],
    path: tuple[str, ...],
) -> None:
    """Deep-merge ``layer`` into ``into``, recording each key's source (a str, or per-path map)."""
    for key, value in layer.items():
        sub = (*path, str(key))
        dotted = ".".join(sub)
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, source, origin, sub)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
        label = source if isinstance(source, str) else source.get(dotted)
        if label:
            origin[dotted] = label


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{at}: {problem}", file=str(path)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: top level must be a mapping of sections, got {type(data).__name__}",
                          file=str(path))
    return data


def _env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Nested values and per-key sources from ``PERSONA_A__B`` variables (others are ignored)."""
    layer: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue  # PERSONA_CONFIG, PERSONA_TEST_DATA, ... are not config keys
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if any(not p for p in parts):
            raise ConfigError(f"{var}: malformed config variable (use PERSONA_<SECTION>__<KEY>)", source=f"env {var}")
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _EnvText(env[var])
        sources[".".join(parts)] = f"env {var}"
    return layer, sources


def user_config_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/persona/persona.yaml``, defaulting to ``~/.config``."""
    xdg = env.get("XDG_CONFIG_HOME")
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return (Path(xdg) if xdg else home / ".config") / "persona" / "persona.yaml"


def _defaults() -> dict[str, Any]:
    resource = importlib.resources.files("persona") / "configs" / "default.yaml"
    with importlib.resources.as_file(resource) as path:
        return _read_yaml(Path(path), "packaged defaults")


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge the layers described in the module docstring and validate the result.

    ``path`` (or ``$PERSONA_CONFIG``) must exist if given; the default user
    file is used only when present. Raises ConfigError naming the key path,
    file or variable at fault.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    _merge(merged, _defaults(), "defaults", origin, ())
    sources = ["defaults"]

    user: Path | None = None
    if path is not None:
        user = Path(path).expanduser()
    elif env.get("PERSONA_CONFIG"):
        user = Path(env["PERSONA_CONFIG"]).expanduser()
    elif user_config_path(env).is_file():
        user = user_config_path(env)
    if user is not None:
        if not user.is_file():
            raise ConfigError("config file does not exist", file=str(user))
        _merge(merged, _read_yaml(user, str(user)), str(user), origin, ())
        sources.append(str(user))

    env_values, env_sources = _env_layer(env)
    if env_values:
        _merge(merged, env_values, env_sources, origin, ())
        sources.append("env")

    if overrides:
        _merge(merged, _expand_dotted(overrides, "override"), "override", origin, ())
        sources.append("override")

    cfg = Config.from_dict(merged, origin)
    return dataclasses.replace(cfg, sources=tuple(sources))


_current: Config | None = None
_current_lock = threading.Lock()


def get_config() -> Config:
    """The process-wide config: what :func:`set_config` installed, else ``load_config()`` (cached)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = load_config()
        return _current


def set_config(config: Config | None) -> None:
    """Install ``config`` as the process-wide config (the CLI does this after ``--config``); None resets."""
    global _current
    with _current_lock:
        _current = config


def resolve_threads(threads: int) -> int:
    """``threads``, or the number of cores this process may use when it is 0."""
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
