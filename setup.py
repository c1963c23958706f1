"""Build script: compiles the codec core, the Cython wrappers (spreadcode/_codec.pyx) and
the C kernels they call (spreadcode/csrc/*.c), into one extension with OpenMP.

Everything else (metadata, dependencies) lives in pyproject.toml.
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def _openmp_flags():
    """OpenMP lets the codec kernels use every core; fall back to serial if asked."""
    if os.environ.get("SPREADCODE_NO_OPENMP") or sys.platform == "darwin":
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


compile_omp, link_omp = _openmp_flags()

# The C kernels: each .c with its .h, plus the headers shared by all of them. They include
# each other by plain name (same folder); _codec.pyx includes them as "csrc/<name>.h",
# found through the "spreadcode" include dir (not csrc itself: its short header names
# would then shadow any system header of the same name).
CSRC = "spreadcode/csrc"
C_KERNELS = ["lattice", "signs", "scan", "int8", "greedy"]
C_HEADERS = [f"{CSRC}/{name}.h" for name in ["common", "words", *C_KERNELS]]

extensions = [
    Extension(
        "spreadcode._codec",
        ["spreadcode/_codec.pyx", *(f"{CSRC}/{name}.c" for name in C_KERNELS)],
        include_dirs=[numpy.get_include(), "spreadcode"],
        depends=C_HEADERS,
        extra_compile_args=["-O3", "-march=x86-64-v2", *compile_omp]
        if sys.platform.startswith("linux") else ["-O3", *compile_omp],
        extra_link_args=link_omp,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
