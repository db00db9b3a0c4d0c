"""The generated code of ``protos/persona/v1/persona.proto``, built at import into a cache directory.

``grpc_tools.protoc`` compiles the ``.proto`` the first time a process imports this module (or
when the ``.proto`` or grpcio-tools changed: the cache key is a hash of both) into
``$PERSONA_PROTO_CACHE``, else ``$XDG_CACHE_HOME/persona/protos`` (``~/.cache/...``), else a
temporary directory. Nothing generated is committed, so the code can never drift from the
``.proto``; ``tests/test_service_proto.py`` checks the loaded descriptors against a fresh compile.

The generated modules are loaded under private top-level names (``_persona_v1_persona_pb2``),
because their natural package ``persona.v1`` would shadow this package.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from persona.errors import PersonaError

#: the .proto, relative to the protos/ include root
PROTO = "persona/v1/persona.proto"
PB2_NAME = "_persona_v1_persona_pb2"
GRPC_NAME = "_persona_v1_persona_pb2_grpc"

_lock = threading.Lock()


def protos_root() -> Path:
    """The ``protos/`` directory: ``$PERSONA_PROTOS``, else the source tree's, else the copy an
    installed wheel carries in the package (``persona/protos/``, put there by setup.py's build_py)."""
    env = os.environ.get("PERSONA_PROTOS")
    here = Path(__file__).resolve()
    root = Path(env) if env else here.parents[2] / "protos"
    if not env and not (root / PROTO).is_file():
        root = here.parents[1] / "protos"
    if not (root / PROTO).is_file():
        raise PersonaError(f"cannot find {PROTO} under {root} (set PERSONA_PROTOS to the protos/ directory)")
    return root


def _grpc_tools() -> tuple[ModuleType, Path, str]:
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - the service extra installs it
        raise PersonaError("the service needs grpcio-tools: pip install 'persona-genomics[service]'") from exc
    include = Path(grpc_tools.__file__).parent / "_proto"
    try:
        from importlib.metadata import version

        v = version("grpcio-tools")
    except Exception:  # noqa: BLE001
        v = "unknown"
    return protoc, include, v


def cache_dir() -> Path:
    env = os.environ.get("PERSONA_PROTO_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "persona" / "protos"


def compile_proto(out_dir: Path, *, descriptor_set: Path | None = None) -> None:
    """Run protoc on the .proto: Python messages and gRPC stubs into ``out_dir`` (and a descriptor set)."""
    protoc, include, _ = _grpc_tools()
    root = protos_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if descriptor_set is not None:
        argv.append(f"--descriptor_set_out={descriptor_set}")
    argv.append(PROTO)
    rc = protoc.main(argv)
    if rc != 0:
        raise PersonaError(f"protoc failed on {root / PROTO} (exit {rc})")


def _generated_dir() -> Path:
    """The cache directory holding this .proto's generated code (compiled when missing)."""
    _, _, tools_version = _grpc_tools()
    text = (protos_root() / PROTO).read_bytes()
    key = hashlib.sha256(text + tools_version.encode()).hexdigest()[:16]
    candidates = [cache_dir(), Path(tempfile.gettempdir()) / f"persona-protos-{os.getuid()}"]
    last: Exception | None = None
    for base in candidates:
        target = base / key
        if (target / "persona" / "v1" / "persona_pb2_grpc.py").is_file():
            return target
        try:
            base.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
            try:
                compile_proto(tmp)
                try:
                    os.rename(tmp, target)  # atomic; a concurrent compile may have won
                except OSError:
                    if not (target / "persona" / "v1" / "persona_pb2_grpc.py").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return target
        except OSError as exc:
            last = exc
    raise PersonaError(f"cannot write the generated gRPC code to {candidates[0]}: {last}")


def _load(name: str, path: Path, source: str | None = None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        if source is None:
            spec.loader.exec_module(mod)
        else:
            exec(compile(source, str(path), "exec"), mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def modules() -> tuple[ModuleType, ModuleType]:
    """``(persona_pb2, persona_pb2_grpc)``, generated and loaded once per process."""
    with _lock:
        pb2 = sys.modules.get(PB2_NAME)
        grpc_mod = sys.modules.get(GRPC_NAME)
        if pb2 is not None and grpc_mod is not None:
            return pb2, grpc_mod
        gen = _generated_dir() / "persona" / "v1"
        pb2 = _load(PB2_NAME, gen / "persona_pb2.py")
        src = (gen / "persona_pb2_grpc.py").read_text()
        original = "from persona.v1 import persona_pb2 as"
        if original not in src:
            raise PersonaError(f"unexpected generated stub {gen / 'persona_pb2_grpc.py'}: no '{original}'")
        grpc_mod = _load(GRPC_NAME, gen / "persona_pb2_grpc.py", src.replace(original, f"import {PB2_NAME} as"))
        return pb2, grpc_mod


def __getattr__(name: str) -> ModuleType:
    if name == "pb2":
        return modules()[0]
    if name == "pb2_grpc":
        return modules()[1]
    raise AttributeError(name)
