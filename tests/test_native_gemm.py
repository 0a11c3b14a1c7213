"""Every native int8 GEMM path this CPU runs equals gemm_ref bit for bit, and gemm_ref equals a naive loop.

Compiles csrc/tests/test_gemm.cpp with the four csrc/gemm_*.cpp files and cpu_features.cpp (g++ -O2, in a
temporary directory) and runs it: awkward sizes, strided W views, int8 and uint8 activations, lda > K,
extreme values up to the largest K the engine allows, guard pages after A and W, and the AVX2 input on
which u8 x s8 vpmaddubsw would saturate (see the program's header). Skips cleanly without g++ or off x86-64.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def test_native_gemm_paths_equal_the_scalar_definition(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the SIMD GEMM files target x86-64, not {platform.machine()}")
    exe = tmp_path / "test_gemm"
    sources = [CSRC / "tests" / "test_gemm.cpp", *sorted(CSRC.glob("gemm_*.cpp")), CSRC / "cpu_features.cpp"]
    build = subprocess.run(
        [gxx, "-O2", "-std=c++17", "-pthread", f"-I{CSRC}", *map(str, sources), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    assert run.stdout.rstrip().endswith("PASS"), run.stdout
