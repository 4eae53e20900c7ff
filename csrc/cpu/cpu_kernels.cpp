#include "cpu_kernels.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace sgmcmc_fused::cpu {
namespace {

bool cpu_has(const char* isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  const std::string name = isa;
  if (name == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  }
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  (void)isa;
#endif
  return false;
}

const KernelTable* choose() {
  const char* requested = std::getenv("SGMCMC_FUSED_CPU_ISA");
  if (requested != nullptr && *requested != '\0') {
    const std::string name = requested;
    const KernelTable* table = name == "avx512"     ? avx512_kernels()
                               : name == "avx2"     ? avx2_kernels()
                               : name == "baseline" ? baseline_kernels()
                                                    : nullptr;
    TORCH_CHECK(name == "avx512" || name == "avx2" || name == "baseline",
                "SGMCMC_FUSED_CPU_ISA must be one of baseline, avx2, avx512; got '", name, "'");
    TORCH_CHECK(table != nullptr, "SGMCMC_FUSED_CPU_ISA=", name, ": not built for this platform");
    TORCH_CHECK(name == "baseline" || cpu_has(name.c_str()), "SGMCMC_FUSED_CPU_ISA=", name,
                ": this CPU does not support it");
    return table;
  }
  if (avx512_kernels() != nullptr && cpu_has("avx512")) return avx512_kernels();
  if (avx2_kernels() != nullptr && cpu_has("avx2")) return avx2_kernels();
  return baseline_kernels();
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable* const table = choose();
  return *table;
}

std::string cpu_isa() { return kernels().isa; }

}  // namespace sgmcmc_fused::cpu
