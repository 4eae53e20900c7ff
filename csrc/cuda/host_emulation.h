// Runs the CUDA kernel bodies of csrc/cuda/*.cuh as host C++, one thread at a
// time, so that the tests can execute them without a GPU (python_tests/emulated/
// builds them with AddressSanitizer and UBSan and compares them with the eager
// oracle). Nothing in the product includes this header.
//
// What it provides: the CUDA qualifiers (__global__, __device__, __host__,
// __forceinline__, __launch_bounds__, __grid_constant__) as host C++, the
// rounding-exact _rn arithmetic intrinsics, dim3, threadIdx / blockIdx /
// blockDim / gridDim as thread_local dim3s, and launch(), which checks the
// configuration the way the driver does and then runs every thread of every
// block in turn, in forward or in reverse order.
//
// ---- Rules for a kernel in csrc/cuda/ -----------------------------------------
// 1. Kernel bodies and their device helpers live in .cuh headers that include
//    no CUDA runtime header (no CUDAContext.h, streams, guards); host glue
//    stays in the .cu file.
// 2. Use no __shared__ memory, __syncthreads / __syncwarp, warp shuffles or
//    votes, atomics or cooperative groups. They are left undefined here on
//    purpose: threads run one after another, so every barrier would be
//    trivially met and every race invisible, and such a kernel must fail to
//    compile under emulation rather than pass its tests wrongly. A kernel that
//    needs them needs another test plan (compute-sanitizer racecheck on a GPU).
// 3. Declare __launch_bounds__(kSomeConstant) with a named constant, and pass
//    the same constant to launch<kSomeConstant>() in the emulated glue.
// 4. Write a * b + c that the oracle rounds twice with the _rn intrinsics
//    (nvcc contracts it into an FMA otherwise; the emulation builds with
//    -ffp-contract=off and cannot see the difference).
//
// Include it after every torch/ATen header and before the kernel headers.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#error "host_emulation.h is for a host compiler; nvcc compiles the kernels for the GPU"
#endif

#define SGMCMC_FUSED_HOST_EMULATION 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers -----------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__

// ---- grid coordinates -------------------------------------------------------------
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// The coordinates of the thread being run; 0 in every dimension outside a launch.
inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{0, 0, 0};
inline thread_local dim3 gridDim{0, 0, 0};

// ---- rounding-exact arithmetic: each operation rounded once (-ffp-contract=off) ----
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

namespace sgmcmc_fused::emulation {

// Order in which launch() runs blocks, and threads within a block. A kernel
// whose threads are independent (as every kernel here must be) gives
// bit-identical results in both.
enum class ThreadOrder : int64_t { kForward = 0, kReverse = 1 };

// Limits every CUDA GPU this project builds for (sm_80, sm_90) enforces at
// launch, from the CUDA C++ Programming Guide's table of technical
// specifications.
inline constexpr unsigned int kMaxThreadsPerBlock = 1024;
inline constexpr unsigned int kMaxBlockDimZ = 64;
inline constexpr unsigned long long kMaxGridDimX = (1ull << 31) - 1;
inline constexpr unsigned int kMaxGridDimYZ = 65535;
// Kernel parameters: 4 KiB. CUDA 12.1 raised the limit to 32764 bytes on Volta
// and newer, but only with a 12.1+ toolkit *and* driver; torch >= 2.6, the
// oldest this project supports, is also built against CUDA 11.8, where 4 KiB is
// the limit. The multi-tensor-apply table is sized to fit it.
inline constexpr std::size_t kMaxKernelParamBytes = 4096;

// Bytes of the parameter buffer of a kernel taking Params: each parameter at
// the next multiple of its alignment, as the CUDA ABI lays them out.
template <typename... Params>
constexpr std::size_t kernel_param_bytes() {
  std::size_t offset = 0;
  ((offset = (offset + alignof(Params) - 1) / alignof(Params) * alignof(Params) + sizeof(Params)), ...);
  return offset;
}

class LaunchError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Refuses what cudaLaunchKernel refuses: a zero dimension, a block over 1024
// threads or over the kernel's launch bound, block.z over 64, grid.x over
// 2^31 - 1, grid.y or grid.z over 65535, parameters over 4 KiB.
inline void check_launch(const char* kernel, dim3 grid, dim3 block, unsigned int launch_bound,
                         std::size_t param_bytes) {
  std::ostringstream why;
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0) {
    why << "a grid or block dimension is 0";
  } else if (threads > kMaxThreadsPerBlock) {
    why << "a block of " << threads << " threads exceeds the device limit of " << kMaxThreadsPerBlock;
  } else if (threads > launch_bound) {
    why << "a block of " << threads << " threads exceeds the kernel's __launch_bounds__(" << launch_bound << ")";
  } else if (block.z > kMaxBlockDimZ) {
    why << "block.z = " << block.z << " exceeds " << kMaxBlockDimZ;
  } else if (grid.x > kMaxGridDimX) {
    why << "grid.x = " << grid.x << " exceeds 2^31 - 1";
  } else if (grid.y > kMaxGridDimYZ || grid.z > kMaxGridDimYZ) {
    why << "grid.y = " << grid.y << " or grid.z = " << grid.z << " exceeds " << kMaxGridDimYZ;
  } else if (param_bytes > kMaxKernelParamBytes) {
    why << "its parameters take " << param_bytes << " bytes, over the " << kMaxKernelParamBytes
        << "-byte limit of CUDA before 12.1";
  } else {
    return;
  }
  std::ostringstream msg;
  msg << "emulated launch of " << kernel << " <<<(" << grid.x << ", " << grid.y << ", " << grid.z << "), (" << block.x
      << ", " << block.y << ", " << block.z << ")>>> would be refused by CUDA: " << why.str();
  throw LaunchError(msg.str());
}

namespace detail {

// Visits 0 .. n - 1 in the given order.
template <typename Body>
void for_each_index(unsigned int n, ThreadOrder order, const Body& body) {
  for (unsigned int k = 0; k < n; ++k) body(order == ThreadOrder::kForward ? k : n - 1 - k);
}

// Visits every (x, y, z) of `extent`, x fastest (the hardware's linear order).
template <typename Body>
void for_each_coordinate(dim3 extent, ThreadOrder order, const Body& body) {
  for_each_index(extent.z, order, [&](unsigned int z) {
    for_each_index(extent.y, order, [&](unsigned int y) {
      for_each_index(extent.x, order, [&](unsigned int x) { body(dim3(x, y, z)); });
    });
  });
}

}  // namespace detail

// Runs kernel<<<grid, block>>>(args...) on the calling host thread: checks the
// configuration (check_launch, with kLaunchBound the kernel's
// __launch_bounds__), converts the arguments to the kernel's parameter types
// once, as the driver copies them into the parameter buffer, then calls the
// kernel once per thread with threadIdx / blockIdx set, every block and thread
// in `order`. Throws LaunchError without running anything if the launch would
// be refused.
template <unsigned int kLaunchBound, typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, ThreadOrder order, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: wrong number of kernel arguments");
  static_assert((!std::is_reference_v<Params> && ...), "a kernel takes its parameters by value");
  check_launch(name, grid, block, kLaunchBound, kernel_param_bytes<Params...>());
  const std::tuple<std::remove_cv_t<Params>...> params(std::forward<Args>(args)...);
  gridDim = grid;
  blockDim = block;
  detail::for_each_coordinate(grid, order, [&](dim3 b) {
    blockIdx = b;
    detail::for_each_coordinate(block, order, [&](dim3 t) {
      threadIdx = t;
      std::apply(kernel, params);
    });
  });
  threadIdx = blockIdx = blockDim = gridDim = dim3(0, 0, 0);
}

}  // namespace sgmcmc_fused::emulation
