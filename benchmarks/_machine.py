"""What every benchmark prints about the machine it ran on (imported by the scripts in this folder)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, with its vCPU count and the SIMD flags that decide the int8 kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or 'unknown'}, {os.cpu_count()} vCPUs"
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")),
                platform.processor() or "unknown")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} vCPUs, {' '.join(simd) or 'no AVX2'}"


def load() -> str:
    """The 1/5/15-minute load averages: a busy machine makes multi-thread wall times meaningless."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"
