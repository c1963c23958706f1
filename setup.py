"""Build script: compiles the Cython codec core (spreadcode/_codec.pyx) with OpenMP.

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

extensions = [
    Extension(
        "spreadcode._codec",
        ["spreadcode/_codec.pyx"],
        include_dirs=[numpy.get_include()],
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
