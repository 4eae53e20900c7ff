// CPU kernel bodies, compiled once per instruction set. Include only from a
// cpu_kernels_<isa>.cpp, after its `#pragma GCC target`, inside its own
// namespace, with SGMCMC_CPU_ISA_LEVEL set (0 baseline, 2 AVX2, 3 AVX-512).
//
// Every standard, ATen and project header must already be included by the
// .cpp before its pragma, so their out-of-line functions keep the baseline
// target (the linker may pick any TU's copy of an inline function).
//
// Two loops per block of kElementsPerBlock elements, both over L1-resident
// data: the noise draw (Philox in explicit SIMD, Box-Muller in a vectorised
// loop) into a 4 KiB buffer, then the update, which streams theta, g, V once.

#ifndef SGMCMC_CPU_ISA_LEVEL
#error "define SGMCMC_CPU_ISA_LEVEL before including cpu_kernels_impl.h"
#endif

// Quads (4 elements sharing one Philox call) drawn per block.
constexpr int64_t kQuadsPerBlock = 256;
constexpr int64_t kElementsPerBlock = 4 * kQuadsPerBlock;
// Independent Philox vectors in flight: the rounds form a serial chain of
// multiply/shift/blend, so interleaving hides its latency (measured on Zen 4:
// 0.61 -> 0.39 ns per element going from 1 to 4).
constexpr int kInterleave = 4;

#define SGMCMC_KERNEL_INLINE inline __attribute__((always_inline))

// ---- 32x32 -> 64-bit products of a vector of uint32 lanes -------------------
// mulhilo(m, x) returns the high and low words of m * x[i] for every lane: one
// unsigned even-lane multiply for lanes 0, 2, ... and one for the odd lanes
// shifted down, reassembled with blends. (Compilers left to themselves widen
// every lane to 64 bits and use a full 64-bit multiply, about 2x slower.)
#if SGMCMC_CPU_ISA_LEVEL == 3
constexpr int kLanes = 16;
typedef uint32_t u32v __attribute__((vector_size(64)));
SGMCMC_KERNEL_INLINE void mulhilo(uint32_t m, u32v x, u32v& hi, u32v& lo) {
  const __m512i xv = reinterpret_cast<__m512i>(x), mv = _mm512_set1_epi32(static_cast<int>(m));
  const __m512i even = _mm512_mul_epu32(xv, mv);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(xv, 32), mv);
  lo = reinterpret_cast<u32v>(_mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32)));
  hi = reinterpret_cast<u32v>(_mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd));
}
#elif SGMCMC_CPU_ISA_LEVEL == 2
constexpr int kLanes = 8;
typedef uint32_t u32v __attribute__((vector_size(32)));
SGMCMC_KERNEL_INLINE void mulhilo(uint32_t m, u32v x, u32v& hi, u32v& lo) {
  const __m256i xv = reinterpret_cast<__m256i>(x), mv = _mm256_set1_epi32(static_cast<int>(m));
  const __m256i even = _mm256_mul_epu32(xv, mv);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(xv, 32), mv);
  lo = reinterpret_cast<u32v>(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA));
  hi = reinterpret_cast<u32v>(_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA));
}
#elif defined(__SSE2__)
constexpr int kLanes = 4;
typedef uint32_t u32v __attribute__((vector_size(16)));
SGMCMC_KERNEL_INLINE void mulhilo(uint32_t m, u32v x, u32v& hi, u32v& lo) {
  const __m128i xv = reinterpret_cast<__m128i>(x), mv = _mm_set1_epi32(static_cast<int>(m));
  const __m128i low_words = _mm_set1_epi64x(0xFFFFFFFFll);
  const __m128i even = _mm_mul_epu32(xv, mv);
  const __m128i odd = _mm_mul_epu32(_mm_srli_epi64(xv, 32), mv);
  lo = reinterpret_cast<u32v>(_mm_or_si128(_mm_and_si128(even, low_words), _mm_slli_epi64(odd, 32)));
  hi = reinterpret_cast<u32v>(_mm_or_si128(_mm_srli_epi64(even, 32), _mm_andnot_si128(low_words, odd)));
}
#else  // portable: the scalar Philox multiply, lane by lane
constexpr int kLanes = 4;
typedef uint32_t u32v __attribute__((vector_size(16)));
SGMCMC_KERNEL_INLINE void mulhilo(uint32_t m, u32v x, u32v& hi, u32v& lo) {
  for (int i = 0; i < kLanes; ++i) {
    const uint64_t p = static_cast<uint64_t>(m) * x[i];
    hi[i] = static_cast<uint32_t>(p >> 32);
    lo[i] = static_cast<uint32_t>(p);
  }
}
#endif

constexpr int64_t kQuadsPerGroup = kInterleave * kLanes;
static_assert(kQuadsPerBlock % kQuadsPerGroup == 0, "a block holds whole Philox groups");

// Philox4x32-10 (philox.h) of kQuadsPerGroup consecutive quads starting at q,
// words written to x0..x3[0 .. kQuadsPerGroup).
SGMCMC_KERNEL_INLINE void philox_group(uint64_t q, uint32_t stream_id, uint32_t step, uint32_t k0, uint32_t k1,
                                       uint32_t* x0, uint32_t* x1, uint32_t* x2, uint32_t* x3) {
  u32v lane;
  for (int i = 0; i < kLanes; ++i) lane[i] = static_cast<uint32_t>(i);
  u32v c0[kInterleave], c1[kInterleave], c2[kInterleave], c3[kInterleave];
  for (int j = 0; j < kInterleave; ++j) {
    const uint64_t first = q + static_cast<uint64_t>(j * kLanes);
    const uint32_t first_lo = static_cast<uint32_t>(first);
    c0[j] = first_lo + lane;
    // A carry out of the low counter word bumps the high word (q crosses 2^32).
    c1[j] = static_cast<uint32_t>(first >> 32) - reinterpret_cast<u32v>(c0[j] < first_lo);
    c2[j] = u32v{} + stream_id;
    c3[j] = u32v{} + step;
  }
#pragma GCC unroll 10
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
#pragma GCC unroll 4
    for (int j = 0; j < kInterleave; ++j) {
      u32v hi0, lo0, hi1, lo1;
      mulhilo(kPhiloxM0, c0[j], hi0, lo0);
      mulhilo(kPhiloxM1, c2[j], hi1, lo1);
      c0[j] = hi1 ^ c1[j] ^ k0;
      c1[j] = lo1;
      c2[j] = hi0 ^ c3[j] ^ k1;
      c3[j] = lo0;
    }
  }
  for (int j = 0; j < kInterleave; ++j) {
    __builtin_memcpy(x0 + j * kLanes, &c0[j], sizeof(u32v));
    __builtin_memcpy(x1 + j * kLanes, &c1[j], sizeof(u32v));
    __builtin_memcpy(x2 + j * kLanes, &c2[j], sizeof(u32v));
    __builtin_memcpy(x3 + j * kLanes, &c3[j], sizeof(u32v));
  }
}

// Normals of quads [first_quad, first_quad + num_quads) in element order into
// out[0 .. 4 * num_quads); num_quads <= kQuadsPerBlock.
inline void philox_normal_quads(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_quad,
                                int64_t num_quads, float* out) {
  alignas(64) uint32_t x0[kQuadsPerBlock], x1[kQuadsPerBlock], x2[kQuadsPerBlock], x3[kQuadsPerBlock];
  alignas(64) float n0[kQuadsPerBlock], n1[kQuadsPerBlock], n2[kQuadsPerBlock], n3[kQuadsPerBlock];
  const uint32_t k0 = seed_lo(seed), k1 = seed_hi(seed);
  // A partial last group draws a few quads too many into the scratch arrays,
  // cheaper than a scalar tail.
  for (int64_t g = 0; g < num_quads; g += kQuadsPerGroup) {
    philox_group(first_quad + static_cast<uint64_t>(g), stream_id, step, k0, k1, x0 + g, x1 + g, x2 + g, x3 + g);
  }
#pragma omp simd
  for (int64_t i = 0; i < num_quads; ++i) {
    const float u0 = uint32_to_open_uniform(x0[i]), u1 = uint32_to_open_uniform(x1[i]);
    const float u2 = uint32_to_open_uniform(x2[i]), u3 = uint32_to_open_uniform(x3[i]);
    const float r01 = std::sqrt(-2.0f * log_positive(u0));
    const float r23 = std::sqrt(-2.0f * log_positive(u2));
    float s1, c1, s3, c3;
    sincos_0_2pi(kTwoPiF * u1, s1, c1);
    sincos_0_2pi(kTwoPiF * u3, s3, c3);
    n0[i] = r01 * c1;
    n1[i] = r01 * s1;
    n2[i] = r23 * c3;
    n3[i] = r23 * s3;
  }
  for (int64_t i = 0; i < num_quads; ++i) {
    out[4 * i + 0] = n0[i];
    out[4 * i + 1] = n1[i];
    out[4 * i + 2] = n2[i];
    out[4 * i + 3] = n3[i];
  }
}

inline void philox_normal(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_element, int64_t count,
                          float* out) {
  alignas(64) float block[kElementsPerBlock];
  while (count > 0) {
    const int64_t lead = static_cast<int64_t>(first_element % 4);  // elements of the first quad before ours
    const int64_t take = count < kElementsPerBlock - lead ? count : kElementsPerBlock - lead;
    philox_normal_quads(seed, stream_id, step, first_element / 4, (lead + take + 3) / 4, block);
    __builtin_memcpy(out, block + lead, static_cast<size_t>(take) * sizeof(float));
    out += take;
    count -= take;
    first_element += static_cast<uint64_t>(take);
  }
}

// Open uniforms of quads [first_quad, first_quad + num_quads) in element order.
inline void philox_uniform_quads(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_quad,
                                 int64_t num_quads, float* out) {
  alignas(64) uint32_t x0[kQuadsPerBlock], x1[kQuadsPerBlock], x2[kQuadsPerBlock], x3[kQuadsPerBlock];
  const uint32_t k0 = seed_lo(seed), k1 = seed_hi(seed);
  for (int64_t g = 0; g < num_quads; g += kQuadsPerGroup) {
    philox_group(first_quad + static_cast<uint64_t>(g), stream_id, step, k0, k1, x0 + g, x1 + g, x2 + g, x3 + g);
  }
  for (int64_t i = 0; i < num_quads; ++i) {
    out[4 * i + 0] = uint32_to_open_uniform(x0[i]);
    out[4 * i + 1] = uint32_to_open_uniform(x1[i]);
    out[4 * i + 2] = uint32_to_open_uniform(x2[i]);
    out[4 * i + 3] = uint32_to_open_uniform(x3[i]);
  }
}

// ---- DropConnect -----------------------------------------------------------------

template <typename scalar_t>
void dropconnect_typed(const scalar_t* __restrict weight, scalar_t* __restrict out, uint64_t first_element,
                       int64_t count, const MaskParams& m) {
  using opmath_t = at::opmath_type<scalar_t>;
  alignas(64) float block[kElementsPerBlock];
  int64_t done = 0;
  uint64_t e = first_element;
  while (done < count) {
    const int64_t lead = static_cast<int64_t>(e % 4);  // elements of the first quad before ours
    const int64_t n = count - done < kElementsPerBlock - lead ? count - done : kElementsPerBlock - lead;
    const int64_t quads = (lead + n + 3) / 4;
    if (m.kind == 0) {
      philox_uniform_quads(m.seed, m.stream, m.call, e / 4, quads, block);
    } else {
      philox_normal_quads(m.seed, m.stream, m.call, e / 4, quads, block);
    }
    const float* draw = block + lead;
    const scalar_t* w = weight + done;
    scalar_t* o = out + done;
    if (m.kind == 0) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float mask = select_bits(draw[i] >= m.p, m.scale, 0.0f);
        o[i] = static_cast<scalar_t>(static_cast<opmath_t>(w[i]) * static_cast<opmath_t>(mask));
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float mask = 1.0f + m.sigma * draw[i];
        o[i] = static_cast<scalar_t>(static_cast<opmath_t>(w[i]) * static_cast<opmath_t>(mask));
      }
    }
    done += n;
    e += static_cast<uint64_t>(n);
  }
}

// ---- LSTM cell ---------------------------------------------------------------------

SGMCMC_KERNEL_INLINE float sigmoid_op(float x) { return sigmoid_float(x); }
SGMCMC_KERNEL_INLINE float tanh_op(float x) { return tanh_float(x); }
SGMCMC_KERNEL_INLINE double sigmoid_op(double x) { return 1.0 / (1.0 + std::exp(-x)); }
SGMCMC_KERNEL_INLINE double tanh_op(double x) { return std::tanh(x); }

// One row of the cell. fp32/fp64: gate activations first, one loop per gate
// block (each a plain streaming loop the vectoriser takes), then the state
// update from them (exact: they are stored in opmath_t). fp16/bf16: one pass.
// `activations` may alias `gates` (the layer overwrites its pre-activations).
template <typename scalar_t>
void lstm_cell_forward_row(const scalar_t* gates, const scalar_t* __restrict bias, const scalar_t* __restrict c_prev,
                           scalar_t* __restrict h, scalar_t* __restrict c, scalar_t* activations, int64_t H) {
  using opmath_t = at::opmath_type<scalar_t>;
  if constexpr (!std::is_same_v<scalar_t, opmath_t>) {
    // fp16/bf16: the state update takes the gates in opmath_t, before they are rounded for storage
    // (docs/spec.md#cell-and-gradients); reading back the rounded activations would cost c its
    // precision where f c_prev and i g nearly cancel. One pass: each element reads its four gates
    // before it writes them, so `activations` may alias `gates`.
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const opmath_t i = sigmoid_op(static_cast<opmath_t>(gates[j]) + static_cast<opmath_t>(bias[j]));
      const opmath_t f = sigmoid_op(static_cast<opmath_t>(gates[H + j]) + static_cast<opmath_t>(bias[H + j]));
      const opmath_t g = tanh_op(static_cast<opmath_t>(gates[2 * H + j]) + static_cast<opmath_t>(bias[2 * H + j]));
      const opmath_t o = sigmoid_op(static_cast<opmath_t>(gates[3 * H + j]) + static_cast<opmath_t>(bias[3 * H + j]));
      const opmath_t cell = f * static_cast<opmath_t>(c_prev[j]) + i * g;
      activations[j] = static_cast<scalar_t>(i);
      activations[H + j] = static_cast<scalar_t>(f);
      activations[2 * H + j] = static_cast<scalar_t>(g);
      activations[3 * H + j] = static_cast<scalar_t>(o);
      c[j] = static_cast<scalar_t>(cell);
      h[j] = static_cast<scalar_t>(o * tanh_op(cell));
    }
    return;
  }
  for (int64_t block = 0; block < 4; ++block) {
    const scalar_t* in = gates + block * H;
    const scalar_t* b = bias + block * H;
    scalar_t* out = activations + block * H;
    if (block == 2) {  // the cell candidate g
#pragma omp simd
      for (int64_t j = 0; j < H; ++j)
        out[j] = static_cast<scalar_t>(tanh_op(static_cast<opmath_t>(in[j]) + static_cast<opmath_t>(b[j])));
    } else {  // the input, forget and output gates
#pragma omp simd
      for (int64_t j = 0; j < H; ++j)
        out[j] = static_cast<scalar_t>(sigmoid_op(static_cast<opmath_t>(in[j]) + static_cast<opmath_t>(b[j])));
    }
  }
  const scalar_t* i = activations;
  const scalar_t* f = activations + H;
  const scalar_t* g = activations + 2 * H;
  const scalar_t* o = activations + 3 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const opmath_t cell = static_cast<opmath_t>(f[j]) * static_cast<opmath_t>(c_prev[j]) +
                          static_cast<opmath_t>(i[j]) * static_cast<opmath_t>(g[j]);
    c[j] = static_cast<scalar_t>(cell);
    h[j] = static_cast<scalar_t>(static_cast<opmath_t>(o[j]) * tanh_op(cell));
  }
}

template <typename scalar_t>
void lstm_cell_forward_typed(const CellForwardArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t H = a.hidden;
  for (int64_t b = row_begin; b < row_end; ++b) {
    lstm_cell_forward_row<scalar_t>(
        static_cast<const scalar_t*>(a.gates) + b * 4 * H, static_cast<const scalar_t*>(a.bias),
        static_cast<const scalar_t*>(a.c_prev) + b * H, static_cast<scalar_t*>(a.h) + b * a.h_row_stride,
        static_cast<scalar_t*>(a.c) + b * H, static_cast<scalar_t*>(a.activations) + b * 4 * H, H);
  }
}

template <typename scalar_t>
void lstm_cell_backward_row(const scalar_t* __restrict dh, const scalar_t* __restrict dc,
                            const scalar_t* __restrict act, const scalar_t* __restrict c_prev,
                            const scalar_t* __restrict c, scalar_t* __restrict dgates, scalar_t* __restrict dc_prev,
                            int64_t H) {
  using opmath_t = at::opmath_type<scalar_t>;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const opmath_t i = act[j], f = act[H + j], g = act[2 * H + j], o = act[3 * H + j];
    const opmath_t dhj = dh[j];
    const opmath_t tanh_c = tanh_op(static_cast<opmath_t>(c[j]));
    const opmath_t dc_total = static_cast<opmath_t>(dc[j]) + dhj * o * (opmath_t(1) - tanh_c * tanh_c);
    dgates[j] = static_cast<scalar_t>(dc_total * g * i * (opmath_t(1) - i));
    dgates[H + j] = static_cast<scalar_t>(dc_total * static_cast<opmath_t>(c_prev[j]) * f * (opmath_t(1) - f));
    dgates[2 * H + j] = static_cast<scalar_t>(dc_total * i * (opmath_t(1) - g * g));
    dgates[3 * H + j] = static_cast<scalar_t>(dhj * tanh_c * o * (opmath_t(1) - o));
    dc_prev[j] = static_cast<scalar_t>(dc_total * f);
  }
}

template <typename scalar_t>
void lstm_cell_backward_typed(const CellBackwardArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t H = a.hidden;
  for (int64_t b = row_begin; b < row_end; ++b) {
    lstm_cell_backward_row<scalar_t>(
        static_cast<const scalar_t*>(a.grad_h) + b * H, static_cast<const scalar_t*>(a.grad_c) + b * H,
        static_cast<const scalar_t*>(a.activations) + b * 4 * H, static_cast<const scalar_t*>(a.c_prev) + b * H,
        static_cast<const scalar_t*>(a.c) + b * H, static_cast<scalar_t*>(a.grad_gates) + b * 4 * H,
        static_cast<scalar_t*>(a.grad_c_prev) + b * H, H);
  }
}

#define SGMCMC_DISPATCH_FLOATING(dtype, NAME, ...)             \
  switch (dtype) {                                             \
    case c10::ScalarType::Float: {                             \
      using scalar_t = float;                                  \
      __VA_ARGS__;                                             \
      break;                                                   \
    }                                                          \
    case c10::ScalarType::Double: {                            \
      using scalar_t = double;                                 \
      __VA_ARGS__;                                             \
      break;                                                   \
    }                                                          \
    case c10::ScalarType::Half: {                              \
      using scalar_t = c10::Half;                              \
      __VA_ARGS__;                                             \
      break;                                                   \
    }                                                          \
    case c10::ScalarType::BFloat16: {                          \
      using scalar_t = c10::BFloat16;                          \
      __VA_ARGS__;                                             \
      break;                                                   \
    }                                                          \
    default:                                                   \
      TORCH_CHECK(false, NAME, ": unsupported dtype ", dtype); \
  }

inline void dropconnect_weight(c10::ScalarType dtype, const void* weight, void* out, uint64_t first_element,
                               int64_t count, const MaskParams& mask) {
  SGMCMC_DISPATCH_FLOATING(dtype, "dropconnect_weight",
                           dropconnect_typed<scalar_t>(static_cast<const scalar_t*>(weight),
                                                       static_cast<scalar_t*>(out), first_element, count, mask));
}

inline void lstm_cell_forward(c10::ScalarType dtype, const CellForwardArgs& args, int64_t row_begin, int64_t row_end) {
  SGMCMC_DISPATCH_FLOATING(dtype, "lstm_cell_forward", lstm_cell_forward_typed<scalar_t>(args, row_begin, row_end));
}

inline void lstm_cell_backward(c10::ScalarType dtype, const CellBackwardArgs& args, int64_t row_begin,
                               int64_t row_end) {
  SGMCMC_DISPATCH_FLOATING(dtype, "lstm_cell_backward", lstm_cell_backward_typed<scalar_t>(args, row_begin, row_end));
}

// ---- the update ----------------------------------------------------------------

template <typename scalar_t, bool kPreconditioned, bool kWeightDecay, bool kNoise>
void update_block(scalar_t* __restrict param, const scalar_t* __restrict grad,
                  at::opmath_type<scalar_t>* __restrict square_avg, const float* __restrict noise, int64_t n,
                  const LangevinHyper<at::opmath_type<scalar_t>>& h) {
  using opmath_t = at::opmath_type<scalar_t>;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    opmath_t theta = static_cast<opmath_t>(param[i]);
    const opmath_t xi = kNoise ? static_cast<opmath_t>(noise[i]) : opmath_t(0);
    if constexpr (kPreconditioned) {
      opmath_t v = square_avg[i];
      psgld_update<opmath_t, kWeightDecay, kNoise>(theta, static_cast<opmath_t>(grad[i]), v, xi, h);
      square_avg[i] = v;
    } else {
      sgld_update<opmath_t, kWeightDecay, kNoise>(theta, static_cast<opmath_t>(grad[i]), xi, h);
    }
    param[i] = static_cast<scalar_t>(theta);
  }
}

template <typename scalar_t, bool kPreconditioned, bool kWeightDecay, bool kNoise>
void step_span_typed(const StepSpan& span, const StepScalars& scalars) {
  using opmath_t = at::opmath_type<scalar_t>;
  const LangevinHyper<opmath_t> h = make_hyper<opmath_t>(scalars);
  auto* param = static_cast<scalar_t*>(span.param);
  const auto* grad = static_cast<const scalar_t*>(span.grad);
  auto* square_avg = static_cast<opmath_t*>(span.square_avg);
  alignas(64) float noise[kElementsPerBlock];
  for (int64_t b = 0; b < span.numel; b += kElementsPerBlock) {
    const int64_t n = span.numel - b < kElementsPerBlock ? span.numel - b : kElementsPerBlock;
    if constexpr (kNoise) {
      philox_normal(static_cast<uint64_t>(scalars.seed), span.stream_id, span.step,
                    span.first_element + static_cast<uint64_t>(b), n, noise);
    }
    update_block<scalar_t, kPreconditioned, kWeightDecay, kNoise>(
        param + b, grad + b, kPreconditioned ? square_avg + b : nullptr, noise, n, h);
  }
}

template <bool kPreconditioned, bool kWeightDecay, bool kNoise>
void step_span_flags(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return step_span_typed<float, kPreconditioned, kWeightDecay, kNoise>(span, scalars);
    case c10::ScalarType::Double:
      return step_span_typed<double, kPreconditioned, kWeightDecay, kNoise>(span, scalars);
    case c10::ScalarType::Half:
      return step_span_typed<c10::Half, kPreconditioned, kWeightDecay, kNoise>(span, scalars);
    case c10::ScalarType::BFloat16:
      return step_span_typed<c10::BFloat16, kPreconditioned, kWeightDecay, kNoise>(span, scalars);
    default:
      TORCH_CHECK(false, "sgmcmc_fused CPU kernel: unsupported dtype ", dtype);
  }
}

template <bool kPreconditioned>
void step_span(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars) {
  const bool decay = scalars.weight_decay != 0.0, noise = noise_var_scale(scalars) != 0.0;
  if (decay && noise) return step_span_flags<kPreconditioned, true, true>(dtype, span, scalars);
  if (decay) return step_span_flags<kPreconditioned, true, false>(dtype, span, scalars);
  if (noise) return step_span_flags<kPreconditioned, false, true>(dtype, span, scalars);
  return step_span_flags<kPreconditioned, false, false>(dtype, span, scalars);
}

inline void psgld_span(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars) {
  step_span<true>(dtype, span, scalars);
}

inline void sgld_span(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars) {
  step_span<false>(dtype, span, scalars);
}
