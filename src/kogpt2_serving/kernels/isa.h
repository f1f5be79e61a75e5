// Which instruction set the kernels of this library run with, chosen once per process.
//
// The best the CPU has (AMX, AVX-512 VNNI, AVX-512 F+BW, AVX2+FMA, else portable C), capped by
// KOGPT2_KERNEL_ISA (our names) or else DNNL_MAX_CPU_ISA (oneDNN's names, the cap oneDNN itself
// obeys), so that a big CPU can run a smaller class's paths. AMX also needs the kernel's leave
// to use its tile registers (Linux >= 5.16, asked for once per process); without it, VNNI.
#ifndef KOGPT2_KERNELS_ISA_H_
#define KOGPT2_KERNELS_ISA_H_

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace kogpt2 {

enum Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3, kAmx = 4 };
const char* const kIsaNames[] = {"portable", "avx2", "avx512", "avx512_vnni", "amx"};

// Our names and oneDNN's: AVX512_CORE is Skylake's AVX-512 (no VNNI); Cascade Lake to Cooper Lake
// have VNNI (AVX512_CORE_VNNI, AVX512_CORE_BF16); Sapphire Rapids on add AMX.
inline int cap_from(const char* value) {
  if (!value || !*value) return kAmx;
  std::string v(value);
  if (v == "portable" || v == "SSE41" || v == "AVX") return kPortable;
  if (v == "avx2" || v == "AVX2" || v == "AVX2_VNNI" || v == "AVX2_VNNI_2") return kAvx2;
  if (v == "avx512" || v == "AVX512_CORE") return kAvx512;
  if (v == "avx512_vnni" || v == "AVX512_CORE_VNNI" || v == "AVX512_CORE_BF16" || v == "AVX512_CORE_FP16")
    return kAvx512Vnni;
  return kAmx;
}

// AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25), and the kernel's leave to use the
// tiles' 8 KB of state in this process (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA).
inline bool amx_usable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return false;
  const long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

inline int detect_isa() {
  int isa = kPortable;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = kAvx2;
  if (isa == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) isa = kAvx512;
  if (isa == kAvx512 && __builtin_cpu_supports("avx512vnni")) isa = kAvx512Vnni;
  const char* own = std::getenv("KOGPT2_KERNEL_ISA");
  int cap = cap_from(own && *own ? own : std::getenv("DNNL_MAX_CPU_ISA"));
  if (isa == kAvx512Vnni && cap >= kAmx && amx_usable()) isa = kAmx;  // asks for the tiles only if allowed to use them
  return isa < cap ? isa : cap;
}

// One choice for the whole process (an inline function's static is shared by every file).
inline int isa() {
  static int chosen = detect_isa();
  return chosen;
}

}  // namespace kogpt2

#endif  // KOGPT2_KERNELS_ISA_H_
