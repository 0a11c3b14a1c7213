"""Peak int8 multiply-accumulate rate of one core: AVX-512 VNNI (vpdpbusd) and AMX (tdpbssd).

The ceiling the engine's GEMMs are measured against (benchmarks/RESULTS.md). Compiles a tiny C++
loop of independent instructions with g++ and times it on one thread:
* VNNI: 16 independent zmm accumulators; one vpdpbusd = 16 lanes x 4 u8*s8 products = 128 ops.
* AMX: 4 independent C tiles (16x16 int32) fed by 2 A and 2 B tiles; one tdpbssd = 16*16*64 MACs
  = 32768 ops.
Register-resident data, so this is the instruction throughput, not a GEMM. Prints GOPS per core.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from _machine import cpu_name

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

static double now() { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

__attribute__((target("avx512f,avx512vnni"))) double vnni(long iters) {
  __m512i acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi32(0x01020304), b = _mm512_set1_epi32(0x05060708);
  double t = now();
  for (long n = 0; n < iters; ++n) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  t = now() - t;
  int32_t sink[16];
  __m512i s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm512_add_epi32(s, acc[i]);
  _mm512_storeu_si512(sink, s);
  if (sink[0] == 42) puts("");
  return 16.0 * 128.0 * iters / t / 1e9;
}

struct alignas(64) TileConfig { uint8_t palette, start; uint8_t pad[14]; uint16_t colsb[16]; uint8_t rows[16]; };

__attribute__((target("amx-tile,amx-int8"))) double amx(long iters) {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 0;
  TileConfig cfg; memset(&cfg, 0, sizeof cfg); cfg.palette = 1;
  for (int i = 0; i < 8; ++i) { cfg.rows[i] = 16; cfg.colsb[i] = 64; }
  _tile_loadconfig(&cfg);
  static int8_t buf[16 * 64];
  for (int i = 0; i < 16 * 64; ++i) buf[i] = (int8_t)(i % 7 - 3);
  _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  double t = now();
  for (long n = 0; n < iters; ++n) {
    _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7); _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);
  }
  t = now() - t;
  static int32_t out[16 * 16];
  _tile_stored(0, out, 64);
  _tile_release();
  if (out[0] == 42) puts("");
  return 4.0 * 32768.0 * iters / t / 1e9;
}

int main(int argc, char** argv) {
  const bool has_amx = argc > 1 && argv[1][0] == '1';
  double best_v = 0, best_a = 0;
  for (int r = 0; r < 5; ++r) {
    double v = vnni(20000000); if (v > best_v) best_v = v;
    if (has_amx) { double a = amx(2000000); if (a > best_a) best_a = a; }
  }
  printf("%.1f %.1f\n", best_v, best_a);
}
"""


def main() -> None:
    flags = open("/proc/cpuinfo").read()
    if " avx512_vnni" not in flags:
        raise SystemExit("this CPU has no AVX-512 VNNI: nothing to measure")
    has_amx = " amx_int8" in flags
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "peak.cpp"), os.path.join(tmp, "peak")
        with open(src, "w") as f:
            f.write(SOURCE)
        subprocess.run(["g++", "-O3", "-funroll-loops", "-o", exe, src], check=True)
        out = subprocess.run(["taskset", "-c", "0", exe, "1" if has_amx else "0"], check=True, capture_output=True,
                             text=True).stdout.split()
    vnni, amx = map(float, out)
    print(f"cpu: {cpu_name()}, one core")
    print(f"AVX-512 VNNI vpdpbusd peak: {vnni:.0f} GOPS")
    print(f"AMX tdpbssd peak: {amx:.0f} GOPS" if has_amx else "AMX: not present")


if __name__ == "__main__":
    main()
