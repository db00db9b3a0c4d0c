"""Build the Cython kernels in ``native/`` into ``persona._native``.

Every ``native/<name>.pyx`` becomes the extension module ``persona._native.<name>``.
The kernels release the GIL around their loops, so they are compiled with
optimisation on and bounds checks off (set per module with directives).
"""
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent


def native_extensions() -> list[Extension]:
    exts = []
    for pyx in sorted((HERE / "native").glob("*.pyx")):
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
