"""The native chains' SIMD twins (csrc/chains_avx2.cpp, chains_avx512.cpp) equal the scalar definition.

Compiles csrc/tests/test_chains.cpp with csrc/chains_*.cpp by g++ -O2 in a temporary directory and
runs it; the program tests the ISAs this CPU supports (``__builtin_cpu_supports``) against the
``_ref`` chains bit for bit, and exits non-zero on any difference. Skips cleanly without g++ or on
a non-x86 machine (the SIMD files are x86 intrinsics).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


@pytest.fixture(scope="module")
def test_binary(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the SIMD chains are x86 code")
    exe = tmp_path_factory.mktemp("chains_cpp") / "test_chains"
    sources = [str(CSRC / "tests" / "test_chains.cpp"), *map(str, sorted(CSRC.glob("chains_*.cpp")))]
    cmd = [gxx, "-O2", "-std=c++17", f"-I{CSRC}", *sources, "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def test_simd_chains_equal_reference(test_binary):
    run = subprocess.run([str(test_binary)], capture_output=True, text=True, timeout=600)
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert " 0 failed" in run.stdout
