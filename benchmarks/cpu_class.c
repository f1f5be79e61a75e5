/* An LD_PRELOAD shim that makes every library in a process see a smaller CPU class: CPUID
 * answers with the class's features only, and AMX's tile state is refused.
 *
 * Libraries choose their kernels from CPUID: oneDNN (DNNL_MAX_CPU_ISA caps it alone), ONNX
 * Runtime's MLAS (reads no cap), NumPy, our kernels (kernels/isa.h). On a CPU that can fault
 * CPUID (the cpuid_fault flag; Linux's arch_prctl ARCH_SET_CPUID), this turns faulting on for the
 * process and answers each CPUID itself: the real answer with the features above the class
 * cleared (leaf 7). So an AMX Xeon runs every library's AVX2 code, as an AMD EPYC (ml.c5a, ml.c6a)
 * would, on this machine's memory system. Checked 2026-12-07: ONNX Runtime's quantized MatMul ran
 * AMX tiles (tdpbusd) without this and vpmaddubsw on ymm registers with the AVX2 class.
 *
 * KOGPT2_CPU_CLASS names the class: avx2 (no AVX-512, no AVX-VNNI), avx512 (Skylake's AVX-512 F,
 * CD, BW, DQ, VL), avx512_vnni (Ice Lake's AVX-512, VNNI included), avx512_bf16 (Cooper Lake's: the
 * same and AVX512-BF16). None of them has AMX. The flags in /proc/cpuinfo stay the machine's.
 *
 * The answers come from a SIGSEGV handler (a faulting CPUID raises one): a library that installs
 * its own SIGSEGV handler (MXNet, Python's faulthandler) is recorded and called for every other
 * fault instead of replacing this one. Built and preloaded by benchmarks/as_cpu.py. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012
#define ARCH_REQ_XCOMP_PERM 0x1023
#define BIT(n) (1u << (n))

/* Features each class lacks, by CPUID leaf 7's registers (subleaf 0: EBX, ECX, EDX; subleaf 1:
 * EAX, EDX). Names from Intel's SDM, volume 2, CPUID. */
struct Cleared {
  const char* name;
  unsigned ebx0, ecx0, edx0, eax1, edx1;
};

/* Above Ice Lake's AVX-512: AVX512-BF16 (7.1 EAX 5), AVX512-FP16 (EDX 23), VP2INTERSECT (EDX 8);
 * AMX-BF16/TILE/INT8 (EDX 22, 24, 25), AMX-FP16 (7.1 EAX 21), AMX-COMPLEX (7.1 EDX 8); the VEX
 * forms Alder Lake added: AVX-VNNI, AVX-IFMA (7.1 EAX 4, 23), AVX-VNNI-INT8, AVX-NE-CONVERT
 * (7.1 EDX 4, 5); AVX10 (7.1 EDX 19). */
#define ABOVE_VNNI_EDX0 (BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25))
#define ABOVE_VNNI_EAX1 (BIT(4) | BIT(5) | BIT(21) | BIT(23))
#define ABOVE_VNNI_EDX1 (BIT(4) | BIT(5) | BIT(8) | BIT(19))
/* Ice Lake's additions to Skylake's AVX-512: IFMA (EBX 21), VBMI, VBMI2, VNNI, BITALG,
 * VPOPCNTDQ (ECX 1, 6, 11, 12, 14); and the Xeon Phi's (PF, ER: EBX 26, 27; 4VNNIW, 4FMAPS: EDX 2, 3). */
#define ICE_LAKE_EBX0 (BIT(21) | BIT(26) | BIT(27))
#define ICE_LAKE_ECX0 (BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14))
#define PHI_EDX0 (BIT(2) | BIT(3))
/* AVX-512 itself: F, DQ, CD, BW, VL (EBX 16, 17, 28, 30, 31). */
#define AVX512_EBX0 (BIT(16) | BIT(17) | BIT(28) | BIT(30) | BIT(31))

static const struct Cleared kClasses[] = {
    {"avx2", AVX512_EBX0 | ICE_LAKE_EBX0, ICE_LAKE_ECX0, PHI_EDX0 | ABOVE_VNNI_EDX0, ABOVE_VNNI_EAX1,
     ABOVE_VNNI_EDX1},
    {"avx512", ICE_LAKE_EBX0, ICE_LAKE_ECX0, PHI_EDX0 | ABOVE_VNNI_EDX0, ABOVE_VNNI_EAX1, ABOVE_VNNI_EDX1},
    {"avx512_vnni", 0, 0, PHI_EDX0 | ABOVE_VNNI_EDX0, ABOVE_VNNI_EAX1, ABOVE_VNNI_EDX1},
    {"avx512_bf16", 0, 0, PHI_EDX0 | ABOVE_VNNI_EDX0, ABOVE_VNNI_EAX1 & ~BIT(5), ABOVE_VNNI_EDX1},
};

static const struct Cleared* chosen;
static long (*real_syscall)(long, ...);
static int (*real_sigaction)(int, const struct sigaction*, struct sigaction*);
static struct sigaction app_action; /* the process's own SIGSEGV action (default until it sets one) */
static volatile long answered;      /* CPUID instructions answered, for KOGPT2_CPU_CLASS_DEBUG */

static void cpuid_real(unsigned leaf, unsigned sub, unsigned r[4]) {
  real_syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1); /* this thread may run CPUID again */
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
  real_syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

static void answer_cpuid(greg_t* g) {
  unsigned r[4]; /* eax, ebx, ecx, edx */
  const unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
  cpuid_real(leaf, sub, r);
  if (leaf == 7 && sub == 0) {
    r[1] &= ~chosen->ebx0;
    r[2] &= ~chosen->ecx0;
    r[3] &= ~chosen->edx0;
  } else if (leaf == 7 && sub == 1) {
    r[0] &= ~chosen->eax1;
    r[3] &= ~chosen->edx1;
  }
  g[REG_RAX] = r[0]; /* a 32-bit result clears the register's upper half, as CPUID does */
  g[REG_RBX] = r[1];
  g[REG_RCX] = r[2];
  g[REG_RDX] = r[3];
  g[REG_RIP] += 2;
  answered++;
}

/* A CPUID (0F A2) faulted: answer it. Anything else is the process's own fault: its handler, or
 * the default action (the faulting instruction runs again and the kernel ends the process). */
static void on_segv(int sig, siginfo_t* info, void* context) {
  greg_t* g = ((ucontext_t*)context)->uc_mcontext.gregs;
  const unsigned char* ip = (const unsigned char*)g[REG_RIP];
  if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) return answer_cpuid(g);
  if (app_action.sa_flags & SA_SIGINFO) return app_action.sa_sigaction(sig, info, context);
  if (app_action.sa_handler != SIG_DFL && app_action.sa_handler != SIG_IGN) return app_action.sa_handler(sig);
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  real_sigaction(SIGSEGV, &dfl, 0);
}

/* The process's SIGSEGV action is kept, not installed: this shim's handler stays, and calls it. */
int sigaction(int sig, const struct sigaction* act, struct sigaction* old) {
  if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV || !chosen) return real_sigaction(sig, act, old);
  if (old) *old = app_action;
  if (act) app_action = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
  struct sigaction act, old;
  memset(&act, 0, sizeof act);
  act.sa_handler = handler;
  act.sa_flags = SA_RESTART;
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

/* No class here has AMX: its tile state is refused to anything that asks through libc, as
 * Linux refuses a process it has not granted it. */
long syscall(long number, ...) {
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (int i = 0; i < 6; ++i) a[i] = va_arg(ap, long); /* syscall() takes at most six */
  va_end(ap);
  if (!real_syscall) real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  if (chosen && number == SYS_arch_prctl && a[0] == ARCH_REQ_XCOMP_PERM) {
    errno = EPERM;
    return -1;
  }
  return real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

static void fail(const char* why) {
  fprintf(stderr, "cpu_class: %s\n", why);
  _exit(2);
}

__attribute__((constructor)) static void start(void) {
  real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  const char* name = getenv("KOGPT2_CPU_CLASS");
  if (!name || !*name) fail("KOGPT2_CPU_CLASS names no class (avx2, avx512, avx512_vnni, avx512_bf16)");
  for (size_t i = 0; i < sizeof kClasses / sizeof kClasses[0]; ++i)
    if (strcmp(name, kClasses[i].name) == 0) chosen = &kClasses[i];
  if (!chosen) fail("KOGPT2_CPU_CLASS is not one of avx2, avx512, avx512_vnni, avx512_bf16");
  real_sigaction(SIGSEGV, 0, &app_action);
  struct sigaction act;
  memset(&act, 0, sizeof act);
  act.sa_sigaction = on_segv;
  act.sa_flags = SA_SIGINFO | SA_NODEFER;
  real_sigaction(SIGSEGV, &act, 0);
  if (real_syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0)
    fail("this CPU (or its hypervisor) cannot make CPUID fault (no cpuid_fault flag), so no class can be shown");
}

__attribute__((destructor)) static void finish(void) {
  if (getenv("KOGPT2_CPU_CLASS_DEBUG")) fprintf(stderr, "cpu_class: %ld CPUID answered as %s\n", answered, chosen->name);
}
