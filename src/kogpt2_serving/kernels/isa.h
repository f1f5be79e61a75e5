// Which instruction set the kernels of this library run with, chosen once per process.
//
// The best the CPU has (AVX-512 VNNI, AVX-512 F+BW, AVX2+FMA, else portable C), capped by
// KOGPT2_KERNEL_ISA (our names) or else DNNL_MAX_CPU_ISA (oneDNN's names, the cap oneDNN itself
// obeys), so that a big CPU can run a smaller class's paths.
#ifndef KOGPT2_KERNELS_ISA_H_
#define KOGPT2_KERNELS_ISA_H_

#include <cstdlib>
#include <string>

namespace kogpt2 {

enum Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3 };
const char* const kIsaNames[] = {"portable", "avx2", "avx512", "avx512_vnni"};

// Our names and oneDNN's: AVX512_CORE is Skylake's AVX-512 (no VNNI); every later class has VNNI.
inline int cap_from(const char* value) {
  if (!value || !*value) return kAvx512Vnni;
  std::string v(value);
  if (v == "portable" || v == "SSE41" || v == "AVX") return kPortable;
  if (v == "avx2" || v == "AVX2" || v == "AVX2_VNNI" || v == "AVX2_VNNI_2") return kAvx2;
  if (v == "avx512" || v == "AVX512_CORE") return kAvx512;
  return kAvx512Vnni;
}

inline int detect_isa() {
  int isa = kPortable;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = kAvx2;
  if (isa == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) isa = kAvx512;
  if (isa == kAvx512 && __builtin_cpu_supports("avx512vnni")) isa = kAvx512Vnni;
  const char* own = std::getenv("KOGPT2_KERNEL_ISA");
  int cap = cap_from(own && *own ? own : std::getenv("DNNL_MAX_CPU_ISA"));
  return isa < cap ? isa : cap;
}

// One choice for the whole process (an inline function's static is shared by every file).
inline int isa() {
  static int chosen = detect_isa();
  return chosen;
}

}  // namespace kogpt2

#endif  // KOGPT2_KERNELS_ISA_H_
