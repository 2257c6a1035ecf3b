// rnnfast._cpu: which instruction sets this CPU (and its operating system) can run, read with
// CPUID. Compiled for the architecture's baseline with no -march flag, so that it loads on any
// CPU: the package asks it first, then imports the fastest kernel module the answer allows
// (python/rnnfast/_kernels.py). /proc/cpuinfo is not used: under an emulator it describes the
// host, and it exists on Linux only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define RNNFAST_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace py = pybind11;

namespace {

#ifdef RNNFAST_X86

struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(unsigned leaf, unsigned subleaf) {
  Regs r;
#if defined(_MSC_VER)
  int v[4];
  __cpuidex(v, static_cast<int>(leaf), static_cast<int>(subleaf));
  r.a = v[0], r.b = v[1], r.c = v[2], r.d = v[3];
#else
  __cpuid_count(leaf, subleaf, r.a, r.b, r.c, r.d);
#endif
  return r;
}

unsigned max_leaf(unsigned base) { return cpuid(base, 0).a; }

// The register state the operating system saves on a context switch (XCR0). A CPU can have
// AVX while the OS does not save the upper halves of its registers: then AVX must not be used.
unsigned long long xcr0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
#endif
}

bool bit(unsigned reg, int n) { return (reg >> n) & 1u; }

// The names are the compiler's macros (__AVX2__ -> "AVX2"), as CMakeLists.txt records for each
// kernel, so that a kernel runs here when every name of its list is in this one.
std::vector<std::string> features() {
  std::vector<std::string> out;
  auto add = [&out](bool has, const char* name) {
    if (has) out.emplace_back(name);
  };
  if (max_leaf(0) < 1) return out;
  const Regs l1 = cpuid(1, 0);
  const Regs l7 = max_leaf(0) >= 7 ? cpuid(7, 0) : Regs{};
  const Regs l7_1 = (max_leaf(0) >= 7 && l7.a >= 1) ? cpuid(7, 1) : Regs{};
  const Regs e1 = max_leaf(0x80000000u) >= 0x80000001u ? cpuid(0x80000001u, 0) : Regs{};

  const bool osxsave = bit(l1.c, 27);
  const unsigned long long x = osxsave ? xcr0() : 0;
  const bool os_avx = (x & 0x6) == 0x6;        // XMM and YMM state
  const bool os_avx512 = (x & 0xe6) == 0xe6;   // and opmask, ZMM_Hi256, Hi16_ZMM

  add(bit(l1.c, 0), "SSE3");
  add(bit(l1.c, 9), "SSSE3");
  add(bit(l1.c, 19), "SSE4_1");
  add(bit(l1.c, 20), "SSE4_2");
  add(bit(l1.c, 23), "POPCNT");
  add(bit(l1.c, 22), "MOVBE");
  add(bit(l7.b, 3), "BMI");
  add(bit(l7.b, 8), "BMI2");
  add(bit(e1.c, 5), "LZCNT");
  add(os_avx && bit(l1.c, 28), "AVX");
  add(os_avx && bit(l7.b, 5), "AVX2");
  add(os_avx && bit(l1.c, 12), "FMA");
  add(os_avx && bit(l1.c, 29), "F16C");
  if (os_avx512) {
    add(bit(l7.b, 16), "AVX512F");
    add(bit(l7.b, 17), "AVX512DQ");
    add(bit(l7.b, 28), "AVX512CD");
    add(bit(l7.b, 30), "AVX512BW");
    add(bit(l7.b, 31), "AVX512VL");
    add(bit(l7.c, 11), "AVX512VNNI");
    add(bit(l7_1.a, 5), "AVX512BF16");
    add(bit(l7.d, 23), "AVX512FP16");
  }
  return out;
}

#else

// Other architectures: their kernels are built for the baseline (on aarch64 that includes
// NEON), so they need nothing from this list.
std::vector<std::string> features() { return {}; }

#endif

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "The instruction sets this CPU can run, by CPUID (private: see rnnfast.build_info)";
  m.def("features", &features,
        "The instruction sets this CPU and its operating system support, named as the "
        "compiler's macros (\"AVX2\" for __AVX2__).");
}
