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
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} vCPUs, {' '.join(simd) or 'no AVX2'}"


def load() -> str:
    """The 1/5/15-minute load averages: a busy machine makes multi-thread wall times meaningless."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_flags() -> set[str]:
    """The kernel's CPU flags (/proc/cpuinfo); empty where it cannot be read."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))


def int8_features() -> str:
    """Which int8 dot-product paths the CPU exposes: VNNI (vpdpbusd) and AMX tiles decide every int8 runtime's GEMM.

    AMX-INT8 is named explicitly because it can change the ranking: a runtime whose int8 GEMMs can use AMX tiles
    (oneDNN's, under OpenVINO) gets several times VNNI's peak per core where the kernel exposes them; AMX-BF16 and
    AVX512-BF16 make OpenVINO's CPU default precision for float parts bfloat16.
    """
    flags = cpu_flags()
    named = (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8"),
             ("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
    return ", ".join(f"{label} {'yes' if flag in flags else 'no'}" for flag, label in named)
