"""Build of intbert's native kernels (csrc/ -> the extension module intbert._native).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C++
compiler, a non-x86 CPU) the install still succeeds and the engine falls back to its torch
backends with one warning (intbert.engine.backends.native). Each csrc/*_avx2.cpp / *_avx512.cpp /
*_amx.cpp file selects its instruction set with #pragma GCC target, so one set of flags builds all
of them and the CPU is checked at run time, not at build time.
"""

from glob import glob

from setuptools import Extension, setup

native = Extension(
    "intbert._native",
    sources=sorted(glob("csrc/*.cpp")),
    depends=sorted(glob("csrc/*.h")),
    include_dirs=["csrc"],
    language="c++",
    extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-pthread", "-fno-math-errno"],
    extra_link_args=["-pthread"],
    optional=True,
)

setup(ext_modules=[native])
