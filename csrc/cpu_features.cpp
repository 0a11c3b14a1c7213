// Which ISA level this CPU and OS can run (kernels.h: Isa). Read once; INTBERT_ISA lowers it.
#include <cpuid.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels.h"

namespace intbert {
namespace {

// XCR0: which register states the OS saves on a context switch. A CPU flag alone is not enough:
// AVX-512 needs opmask + ZMM state (bits 5-7), AVX needs YMM (bit 2), AMX tile config/data (17, 18).
uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// Linux keeps AMX tile data off until a process asks (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); without the permission the first tile instruction raises SIGILL.
bool request_amx_permission() {
#ifdef SYS_arch_prctl
  const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
  return false;
#endif
}

Isa detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return ISA_SCALAR;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12);
  if (!osxsave) return ISA_SCALAR;
  const uint64_t x = xcr0();
  if ((x & 0x6) != 0x6) return ISA_SCALAR;  // SSE + AVX state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return ISA_SCALAR;
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31), vnni = c & (1u << 11);
  const bool amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25);
  if (!(avx2 && fma && bmi2)) return ISA_SCALAR;
  if (!(avx512f && avx512dq && avx512bw && avx512vl && vnni) || (x & 0xE0) != 0xE0) return ISA_AVX2;
  if (!(amx_tile && amx_int8) || !request_amx_permission()) return ISA_AVX512;
  // The permission makes the kernel enable XTILEDATA in this process's XCR0.
  if ((xcr0() & 0x60000) != 0x60000) return ISA_AVX512;
  return ISA_AMX;
}

}  // namespace

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

}  // namespace intbert
