// Fused bias + GELU (erf form, as BERT's "gelu") forward for the FFN (no backward):
//
//   out[r, c] = gelu(x[r, c] + bias[c]),   gelu(v) = 0.5 * v * (1 + erf(v / sqrt(2)))
//
// Shapes: x, out (rows, C) row-major contiguous; bias (C). Any C >= 1.
// Dtypes: f32 (bias_gelu_f32) and bf16 (bias_gelu_bf16, raw 16-bit storage); computed in f32,
// one rounding at the store. One block per row, threads stride over the columns.
// Self-contained: no headers (NVRTC builtins only).

typedef unsigned short bf16_t;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ void store(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16_t* p, long i, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (bf16_t)((u >> 16) | 0x40u); return; }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = (bf16_t)(u >> 16);
}

template <typename T>
__device__ __forceinline__ void bias_gelu(const T* __restrict__ x, const T* __restrict__ bias,
                                          T* __restrict__ out, int rows, int C) {
  const long row = blockIdx.x;
  if (row >= rows) return;
  const T* xr = x + row * C;
  T* orow = out + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = to_f32(xr[c]) + to_f32(bias[c]);
    store(orow, c, 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f)));
  }
}

extern "C" __global__ void bias_gelu_f32(const float* x, const float* bias, float* out, int rows, int C) {
  bias_gelu<float>(x, bias, out, rows, C);
}

extern "C" __global__ void bias_gelu_bf16(const bf16_t* x, const bf16_t* bias, bf16_t* out, int rows, int C) {
  bias_gelu<bf16_t>(x, bias, out, rows, C);
}
