// Fused residual-add + LayerNorm forward (no backward): the frozen layers' "add & norm".
//
//   out[r, :] = (a - mean(a)) / sqrt(var(a) + eps) * gamma + beta,   a = x[r, :] + res[r, :]
//   (res is skipped when has_res == 0; var is the biased variance, as PyTorch)
//
// Shapes: x, res, out (rows, C) row-major contiguous; wb (2, C) = [gamma; beta]. Any C >= 1.
// Dtypes: f32 (add_layer_norm_f32) and bf16 (add_layer_norm_bf16, raw 16-bit storage);
// the sum, statistics and normalisation are accumulated in f32, one rounding at the store.
// One warp per row, 8 rows per 256-thread block. Rows with C <= 1024 are held in registers
// (read once, two-pass mean/variance from registers, written once); wider rows are re-read.
// Self-contained: no headers (NVRTC builtins only).

typedef unsigned short bf16_t;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ void store(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16_t* p, long i, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (bf16_t)((u >> 16) | 0x40u); return; }  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  p[i] = (bf16_t)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

#define LN_MAXV 32  // values per lane held in registers: rows up to 32 * 32 = 1024 wide

template <typename T>
__device__ __forceinline__ void add_layer_norm(const T* __restrict__ x, const T* __restrict__ res,
                                               const T* __restrict__ wb, T* __restrict__ out,
                                               int rows, int C, float eps, int has_res) {
  const int lane = threadIdx.x & 31;
  const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * C;
  const T* rr = res + row * C;
  T* orow = out + row * C;
  const T* g = wb;
  const T* b = wb + C;
  const float inv_c = 1.0f / (float)C;
  if (C <= 32 * LN_MAXV) {
    float v[LN_MAXV];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_MAXV; ++i) {
      const int c = i * 32 + lane;
      float a = 0.0f;
      if (c < C) {
        a = to_f32(xr[c]);
        if (has_res) a += to_f32(rr[c]);
      }
      v[i] = a;
      s += a;
    }
    const float mean = warp_sum(s) * inv_c;
    float q = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_MAXV; ++i) {
      const int c = i * 32 + lane;
      if (c < C) {
        const float d = v[i] - mean;
        q += d * d;
      }
    }
    const float rstd = 1.0f / sqrtf(warp_sum(q) * inv_c + eps);
#pragma unroll
    for (int i = 0; i < LN_MAXV; ++i) {
      const int c = i * 32 + lane;
      if (c < C) store(orow, c, (v[i] - mean) * rstd * to_f32(g[c]) + to_f32(b[c]));
    }
  } else {
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += to_f32(xr[c]) + (has_res ? to_f32(rr[c]) : 0.0f);
    const float mean = warp_sum(s) * inv_c;
    float q = 0.0f;
    for (int c = lane; c < C; c += 32) {
      const float d = to_f32(xr[c]) + (has_res ? to_f32(rr[c]) : 0.0f) - mean;
      q += d * d;
    }
    const float rstd = 1.0f / sqrtf(warp_sum(q) * inv_c + eps);
    for (int c = lane; c < C; c += 32) {
      const float a = to_f32(xr[c]) + (has_res ? to_f32(rr[c]) : 0.0f);
      store(orow, c, (a - mean) * rstd * to_f32(g[c]) + to_f32(b[c]));
    }
  }
}

extern "C" __global__ void add_layer_norm_f32(const float* x, const float* res, const float* wb,
                                              float* out, int rows, int C, float eps, int has_res) {
  add_layer_norm<float>(x, res, wb, out, rows, C, eps, has_res);
}

extern "C" __global__ void add_layer_norm_bf16(const bf16_t* x, const bf16_t* res, const bf16_t* wb,
                                               bf16_t* out, int rows, int C, float eps, int has_res) {
  add_layer_norm<bf16_t>(x, res, wb, out, rows, C, eps, has_res);
}
