"""Build the Cython kernels in ``native/`` into ``persona._native``.

Every ``native/<name>.pyx`` becomes the extension module ``persona._native.<name>``.
The kernels release the GIL around their loops, so they are compiled with
optimisation on and bounds checks off (set per module with directives).

``native/mm2.pyx`` binds minimap2's C library directly. minimap2's C sources
(MIT licence) are not in this repository; they come from mappy's sdist on PyPI
(``mappy-2.31.tar.gz``, checked by sha256), which carries minimap2's full C
source. They are looked for, in this order:

1. ``PERSONA_MINIMAP2_SRC``: an unpacked mappy or minimap2 source directory;
2. ``third_party/mappy-<ver>/`` beside this file: an sdist made by
   ``python -m build --sdist`` carries them there, so a wheel builds from the
   sdist with no network;
3. the cache ``$PERSONA_CACHE_DIR/mappy-<ver>/`` (default
   ``~/.cache/persona``), which ``deploy/setup.sh`` (or ``python setup.py
   fetch-minimap2``) fills (from ``build/third_party/`` where an older build
   downloaded the sdist);
4. else mappy's sdist is downloaded (with pip, through its configured indexes)
   into the cache; when that fails the build stops with a message saying what
   to do.

They are compiled into the extension with the flags mappy's own setup.py uses.
``python setup.py fetch-minimap2`` only fills the cache (standard library only)
and prints the directory. ``PERSONA_SKIP_NATIVE=1`` leaves the extensions out
(``deploy/setup.sh`` uses it for the editable install, then compiles them once,
in place, with ``build_ext --inplace`` only when a source is newer than its .so).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAPPY_VERSION = "2.31"
#: sha256 of mappy-2.31.tar.gz as published on PyPI (checked whatever the download route)
MAPPY_SHA256 = "152a358c11cba1f992968e2611f1e0a1f4a87aaaa3602d93e4f59d7c1db8f3b2"
MAPPY_URL = f"https://pypi.org/project/mappy/{MAPPY_VERSION}/#files"
SRC_NAME = f"mappy-{MAPPY_VERSION}"
#: where an sdist of ours carries minimap2's sources (never present in a clone: .gitignore'd)
BUNDLED = HERE / "third_party" / SRC_NAME
LEGACY_CACHE = HERE / "build" / "third_party"
#: minimap2's library sources, as mappy's setup.py lists them (no main.c, no example code)
MINIMAP2_SOURCES = [
    "align.c", "bseq.c", "lchain.c", "seed.c", "format.c", "hit.c", "index.c", "pe.c", "jump.c",
    "options.c", "ksw2_extd2_sse.c", "ksw2_exts2_sse.c", "ksw2_extz2_sse.c", "ksw2_ll_sse.c",
    "kalloc.c", "kthread.c", "map.c", "misc.c", "sdust.c", "sketch.c", "esterr.c", "splitidx.c",
]
REQUIRED = ["minimap.h", *MINIMAP2_SOURCES]
#: marker written once an unpacked copy was taken from a tarball whose sha256 matched
VERIFIED = ".persona-sha256-ok"


class MissingMinimap2Sources(RuntimeError):
    pass


def cache_dir() -> Path:
    env = os.environ.get("PERSONA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "persona"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _complete(src: Path) -> bool:
    return all((src / f).is_file() for f in REQUIRED)


def _how_to_fix(reason: str) -> str:
    cache = cache_dir()
    return (
        f"\n\npersona build: minimap2's C sources are needed (they come from the mappy {MAPPY_VERSION} sdist on "
        f"PyPI) and none were found; {reason}\n"
        "Do ONE of these, then build again:\n"
        f"  1. on a machine that reaches PyPI, run `bash deploy/setup.sh` (or `python3 setup.py fetch-minimap2`)\n"
        f"     here once: it fills the cache {cache / SRC_NAME}\n"
        f"  2. download {SRC_NAME}.tar.gz from {MAPPY_URL} (sha256 {MAPPY_SHA256}),\n"
        f"     put it in {cache}/ (it is checked and unpacked there), or unpack it anywhere and\n"
        f"     set PERSONA_MINIMAP2_SRC=/path/to/{SRC_NAME}\n"
        "  3. install from our sdist (`python -m build --sdist` on a connected machine), which carries the sources.\n"
    )


def _download(dest: Path) -> Path:
    """mappy's sdist in ``dest`` (downloaded with pip, through pip's configured indexes), sha256-checked."""
    tarball = dest / f"{SRC_NAME}.tar.gz"
    if tarball.is_file() and _sha256(tarball) == MAPPY_SHA256:
        return tarball
    dest.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        raise MissingMinimap2Sources(_how_to_fix("PIP_NO_INDEX is set, so nothing is downloaded."))
    # inside pip's isolated build environment PYTHONPATH/PYTHONNOUSERSITE point at the build env;
    # the download only needs pip itself, which the running interpreter's base installation provides
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PIP_REQ_TRACKER", "PIP_BUILD_TRACKER")}
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--timeout", "20", "--retries", "1", f"mappy=={MAPPY_VERSION}", "-d", str(dest)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False,
                              timeout=300)
        said = proc.stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        said = str(e)
    if not tarball.is_file():
        raise MissingMinimap2Sources(_how_to_fix(f"downloading {SRC_NAME}.tar.gz with pip failed:\n"
                                                 f"{said[-2000:]}"))
    if _sha256(tarball) != MAPPY_SHA256:
        got = _sha256(tarball)
        tarball.unlink()
        raise MissingMinimap2Sources(_how_to_fix(f"the downloaded {SRC_NAME}.tar.gz has sha256 {got}, "
                                                 f"not {MAPPY_SHA256}; it was removed."))
    return tarball


def _unpack(tarball: Path, into: Path) -> Path:
    if _sha256(tarball) != MAPPY_SHA256:
        raise MissingMinimap2Sources(_how_to_fix(f"{tarball} has the wrong sha256 (want {MAPPY_SHA256})."))
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse odd members
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)
    src = into / SRC_NAME
    (src / VERIFIED).write_text(MAPPY_SHA256 + "\n")
    return src


def _check_bundled(src: Path) -> None:
    """The sources an sdist carries must match the sha256 sums it recorded when it was made."""
    listing = src / "SOURCE.txt"
    if not listing.is_file():
        return
    for line in listing.read_text().splitlines():
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64 and _sha256(src / name) != digest:
            raise MissingMinimap2Sources(f"{src / name} does not match its sha256 in {listing}")


def minimap2_source_dir(download: bool = True) -> Path:
    """The directory holding minimap2's C sources (see the module docstring for the order)."""
    env = os.environ.get("PERSONA_MINIMAP2_SRC")
    if env:
        src = Path(env).expanduser().resolve()
        missing = [f for f in REQUIRED if not (src / f).is_file()]
        if missing:
            raise MissingMinimap2Sources(f"PERSONA_MINIMAP2_SRC={src} lacks minimap2 sources: {', '.join(missing)}")
        return src
    if _complete(BUNDLED):
        _check_bundled(BUNDLED)
        return BUNDLED
    cache = cache_dir()
    src = cache / SRC_NAME
    if _complete(src) and (src / VERIFIED).is_file():
        return src
    for tarball in (cache / f"{SRC_NAME}.tar.gz", LEGACY_CACHE / f"{SRC_NAME}.tar.gz"):
        if tarball.is_file() and _sha256(tarball) == MAPPY_SHA256:
            if tarball.parent != cache:  # an older build's download: keep a copy in the cache
                cache.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tarball, cache / tarball.name)
            return _unpack(cache / tarball.name, cache)
    if not download:
        raise MissingMinimap2Sources(_how_to_fix("and downloading was not asked for."))
    return _unpack(_download(cache), cache)


def _bundle_minimap2(base_dir: Path) -> None:
    """Copy minimap2's library sources (and licence) into an sdist being made, under third_party/."""
    src = minimap2_source_dir()
    dest = Path(base_dir) / "third_party" / SRC_NAME
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    names = sorted({*MINIMAP2_SOURCES, *(p.name for p in src.glob("*.h")), "LICENSE.txt"})
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    if (src / "sse2neon").is_dir():
        shutil.copytree(src / "sse2neon", dest / "sse2neon")
    sums = "".join(f"{_sha256(dest / n)}  {n}\n" for n in names if (dest / n).is_file())
    (dest / "SOURCE.txt").write_text(
        f"minimap2's C library sources (MIT licence, LICENSE.txt), taken from {SRC_NAME}.tar.gz\n"
        f"(sha256 {MAPPY_SHA256}, {MAPPY_URL}) when this sdist was made.\n\n" + sums)


def _in_tree(src: Path) -> Path:
    """``src`` itself when inside the project, else a copy under build/third_party/.

    setuptools records extension sources in the egg-info's SOURCES.txt, which must hold paths relative
    to the project (an absolute one breaks any later build from an sdist). The copy keeps the files'
    times (copy2), so an unchanged source is not compiled again.
    """
    try:
        src.resolve().relative_to(HERE)
        return src
    except ValueError:
        pass
    dest = LEGACY_CACHE / ("minimap2-src" if os.environ.get("PERSONA_MINIMAP2_SRC") else SRC_NAME)
    for name in [*(p.name for p in src.glob("*.[ch]")), *(f"sse2neon/{p.name}" for p in src.glob("sse2neon/*.h"))]:
        a, b = src / name, dest / name
        sa = a.stat()
        if not b.is_file() or (b.stat().st_size, b.stat().st_mtime_ns) != (sa.st_size, sa.st_mtime_ns):
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a, b)
    return dest


def minimap2_extension():
    import numpy
    from setuptools import Extension

    src = _in_tree(minimap2_source_dir())
    rel = src.resolve().relative_to(HERE)
    args = ["-O3", "-DHAVE_KALLOC", "-Wno-unused-function", "-Wno-unused-variable",
            "-Wno-unused-but-set-variable", "-Wno-sign-compare"]
    include_dirs = [numpy.get_include(), "native", str(rel)]
    if platform.machine() in ("aarch64", "arm64"):
        include_dirs.append(str(rel / "sse2neon"))
        args += ["-ftree-vectorize", "-DKSW_SSE2_ONLY", "-D__SSE2__"]
    else:
        args.append("-msse4.1")  # as mappy: the ksw2 kernels are the SSE4.1 build
    return Extension(
        "persona._native.mm2",
        ["native/mm2.pyx", *(str(rel / f) for f in MINIMAP2_SOURCES)],
        include_dirs=include_dirs,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=args,
        libraries=["z", "m", "pthread"],
    )


def native_extensions() -> list:
    import numpy
    from setuptools import Extension

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


def main() -> None:
    from Cython.Build import cythonize
    from setuptools import setup
    from setuptools.command.build_py import build_py
    from setuptools.command.sdist import sdist

    class BuildPy(build_py):
        """Ship the service's .proto files inside the package (``persona/protos/``): an installed
        wheel compiles its gRPC code from them (persona.service.proto), with no source tree around."""

        def run(self) -> None:
            super().run()
            for src in sorted((HERE / "protos").rglob("*.proto")):
                dst = Path(self.build_lib) / "persona" / "protos" / src.relative_to(HERE / "protos")
                dst.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(src), str(dst))

    class Sdist(sdist):
        """An sdist that carries minimap2's sources under third_party/ (MANIFEST.in leaves out the rest)."""

        def make_release_tree(self, base_dir, files) -> None:
            super().make_release_tree(base_dir, files)
            _bundle_minimap2(Path(base_dir))

    os.chdir(HERE)  # relative source paths below are relative to the project
    skip = os.environ.get("PERSONA_SKIP_NATIVE", "") not in ("", "0")
    setup(
        cmdclass={"sdist": Sdist, "build_py": BuildPy},
        ext_modules=[] if skip else cythonize(
            native_extensions(),
            language_level=3,
            quiet=True,
            compiler_directives={
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
                "embedsignature": True,
            },
        ),
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch-minimap2"]:
        try:
            print(minimap2_source_dir())
        except MissingMinimap2Sources as e:
            sys.exit(str(e))
    else:
        try:
            main()
        except MissingMinimap2Sources as e:
            sys.exit(str(e))
