/* An LD_PRELOAD shim that refuses AMX to every library in a process: the AVX-512 VNNI class
 * reproduced on an AMX CPU, for ONNX Runtime and oneDNN as well as our kernels.
 *
 * Linux grants a process AMX's tile state only when it asks (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XTILEDATA); our kernels (kernels/isa.h), oneDNN and ONNX Runtime's MLAS ask through libc's
 * syscall(), and each falls back to its AVX-512 VNNI code when refused. DNNL_MAX_CPU_ISA caps
 * oneDNN alone; ONNX Runtime reads no such setting. This answers that one request with EPERM
 * and passes every other call through. A library that issued the system call itself, not
 * through libc, would not be stopped (checked for ONNX Runtime 1.32 on 2026-12-07: a process that
 * ran a quantized MatMul held the tile state without this, and not with it; the tests check our
 * kernels). Built and preloaded by benchmarks/without_amx.py. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>

#define ARCH_REQ_XCOMP_PERM 0x1023

long syscall(long number, ...) {
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (int i = 0; i < 6; ++i) a[i] = va_arg(ap, long); /* syscall() takes at most six */
  va_end(ap);
  if (number == SYS_arch_prctl && a[0] == ARCH_REQ_XCOMP_PERM) {
    errno = EPERM;
    return -1;
  }
  static long (*real)(long, ...) = 0;
  if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
