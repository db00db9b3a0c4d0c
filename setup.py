"""Build the Cython kernels in ``native/`` into ``persona._native``.

Every ``native/<name>.pyx`` becomes the extension module ``persona._native.<name>``.
The kernels release the GIL around their loops, so they are compiled with
optimisation on and bounds checks off (set per module with directives).

``native/mm2.pyx`` binds minimap2's C library directly. minimap2's C sources
are not in this repository: they come from the mappy sdist on PyPI (mappy is a
declared dependency; the sdist carries minimap2's full C source, MIT licence),
fetched at build time into ``build/third_party/`` and reused from there, or
taken from an unpacked source directory named by ``PERSONA_MINIMAP2_SRC``.
They are compiled into the extension with the flags mappy's own setup.py uses.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
MAPPY_VERSION = "2.31"
#: sha256 of mappy-2.31.tar.gz as published on PyPI (checked whatever the download route)
MAPPY_SHA256 = "152a358c11cba1f992968e2611f1e0a1f4a87aaaa3602d93e4f59d7c1db8f3b2"
THIRD_PARTY = HERE / "build" / "third_party"
#: minimap2's library sources, as mappy's setup.py lists them (no main.c, no example code)
MINIMAP2_SOURCES = [
    "align.c", "bseq.c", "lchain.c", "seed.c", "format.c", "hit.c", "index.c", "pe.c", "jump.c",
    "options.c", "ksw2_extd2_sse.c", "ksw2_exts2_sse.c", "ksw2_extz2_sse.c", "ksw2_ll_sse.c",
    "kalloc.c", "kthread.c", "map.c", "misc.c", "sdust.c", "sketch.c", "esterr.c", "splitidx.c",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_sdist(dest: Path) -> Path:
    """mappy's sdist in ``dest`` (cached; downloaded with pip, through pip's configured indexes)."""
    tarball = dest / f"mappy-{MAPPY_VERSION}.tar.gz"
    if tarball.is_file() and _sha256(tarball) == MAPPY_SHA256:
        return tarball
    dest.mkdir(parents=True, exist_ok=True)
    # inside pip's isolated build environment PYTHONPATH/PYTHONNOUSERSITE point at the build env;
    # the download only needs pip itself, which the running interpreter's base installation provides
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PIP_REQ_TRACKER",
                                                             "PIP_BUILD_TRACKER")}
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           f"mappy=={MAPPY_VERSION}", "-d", str(dest)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False)
    if proc.returncode != 0 or not tarball.is_file() or _sha256(tarball) != MAPPY_SHA256:
        raise RuntimeError(f"could not get the mappy {MAPPY_VERSION} sdist (minimap2's C sources) into {dest}; "
                           "set PERSONA_MINIMAP2_SRC to an unpacked mappy/minimap2 source directory.\n"
                           f"pip said:\n{proc.stdout[-3000:]}")
    return tarball


def minimap2_source_dir() -> Path:
    """The directory holding minimap2's C sources (``PERSONA_MINIMAP2_SRC`` or the cached sdist)."""
    env = os.environ.get("PERSONA_MINIMAP2_SRC")
    if env:
        src = Path(env).expanduser().resolve()
        missing = [f for f in ["minimap.h", *MINIMAP2_SOURCES] if not (src / f).is_file()]
        if missing:
            raise RuntimeError(f"PERSONA_MINIMAP2_SRC={src} lacks minimap2 sources: {', '.join(missing)}")
        return src
    src = THIRD_PARTY / f"mappy-{MAPPY_VERSION}"
    if all((src / f).is_file() for f in ["minimap.h", *MINIMAP2_SOURCES]):
        return src
    tarball = _fetch_sdist(THIRD_PARTY)
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse odd members
            tar.extractall(THIRD_PARTY, filter="data")
        else:
            tar.extractall(THIRD_PARTY)
    return src


def minimap2_extension() -> Extension:
    src = minimap2_source_dir()
    # relative paths: setuptools wants them for in-tree builds; absolute ones for an outside source dir
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(HERE.resolve()))
        except ValueError:
            return str(p)

    args = ["-O3", "-DHAVE_KALLOC", "-Wno-unused-function", "-Wno-unused-variable",
            "-Wno-unused-but-set-variable", "-Wno-sign-compare"]
    include_dirs = [numpy.get_include(), str(HERE / "native"), str(src)]
    if platform.machine() in ("aarch64", "arm64"):
        include_dirs.append(str(src / "sse2neon"))
        args += ["-ftree-vectorize", "-DKSW_SSE2_ONLY", "-D__SSE2__"]
    else:
        args.append("-msse4.1")  # as mappy: the ksw2 kernels are the SSE4.1 build
    return Extension(
        "persona._native.mm2",
        ["native/mm2.pyx", *(rel(src.resolve() / f) for f in MINIMAP2_SOURCES)],
        include_dirs=include_dirs,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=args,
        libraries=["z", "m", "pthread"],
    )


def native_extensions() -> list[Extension]:
    exts = []
    for pyx in sorted((HERE / "native").glob("*.pyx")):
        if pyx.stem == "mm2":
            exts.append(minimap2_extension())
            continue
        exts.append(
            Extension(
                f"persona._native.{pyx.stem}",
                [str(pyx.relative_to(HERE))],
                include_dirs=[numpy.get_include(), str(HERE / "native")],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            )
        )
    return exts


setup(
    ext_modules=cythonize(
        native_extensions(),
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
