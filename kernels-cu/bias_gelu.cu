// Fused bias + GELU (erf form, as BERT's "gelu") forward for the FFN (no backward):
//
//   out[r, c] = gelu(x[r, c] + bias[c]),   gelu(v) = 0.5 * v * (1 + erf(v / sqrt(2)))
//
// Shapes: x, out (rows, C) row-major contiguous; bias (C). Any C >= 1.
// Dtypes: f32 (bias_gelu_f32) and bf16 (bias_gelu_bf16, raw 16-bit storage); computed in f32,
// one rounding at the store. 16-byte vector loads/stores in a grid-stride loop when C and the
// pointers allow, else one block per row. With unroll = 1 each thread issues four independent
// 16-byte loads of x before it uses any (more bytes in flight per thread; opt-in: MSLT_GELU=u4).
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

__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f)); }

// 16-byte vector access: 4 f32 or 8 bf16.
__device__ __forceinline__ void load16(const float* p, float* f) {
  const float4 u = *reinterpret_cast<const float4*>(p);
  f[0] = u.x; f[1] = u.y; f[2] = u.z; f[3] = u.w;
}
__device__ __forceinline__ void store16(float* p, const float* f) {
  *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
}
__device__ __forceinline__ void load16(const bf16_t* p, float* f) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void store16(bf16_t* p, const float* f) {
  bf16_t h[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) store(h, i, f[i]);
  uint4 u;
  u.x = h[0] | ((unsigned int)h[1] << 16);
  u.y = h[2] | ((unsigned int)h[3] << 16);
  u.z = h[4] | ((unsigned int)h[5] << 16);
  u.w = h[6] | ((unsigned int)h[7] << 16);
  *reinterpret_cast<uint4*>(p) = u;
}

// vec = 0: one block per row (grid = rows), threads stride over the columns.
// vec = 1: the caller guarantees C % (16 / sizeof(T)) == 0, 16-byte aligned pointers and
// rows * C < 2^32; a grid-stride loop over 16-byte groups (a group never crosses a row).
// Thread t handles the groups t + k * stride, k = 0, 1, ...: with unroll, k = 4j .. 4j + 3 in one
// iteration while all four exist, then the rest one at a time (groups < 2^30 and stride < 2^20,
// so gi + 3 * stride cannot wrap).
template <typename T>
__device__ __forceinline__ void bias_gelu(const T* __restrict__ x, const T* __restrict__ bias,
                                          T* __restrict__ out, int rows, int C, int vec, int unroll) {
  if (vec) {
    constexpr int E = 16 / sizeof(T);
    const unsigned int groups = (unsigned int)rows * (unsigned int)C / E;
    const unsigned int stride = gridDim.x * blockDim.x;
    unsigned int gi = blockIdx.x * blockDim.x + threadIdx.x;
    if (unroll) {
      for (; gi + 3u * stride < groups; gi += 4u * stride) {
        float v[4][E];
#pragma unroll
        for (int u = 0; u < 4; ++u) load16(x + (gi + u * stride) * E, v[u]);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const unsigned int i = (gi + u * stride) * E;
          float bb[E];
          load16(bias + i % (unsigned int)C, bb);
#pragma unroll
          for (int e = 0; e < E; ++e) v[u][e] = gelu(v[u][e] + bb[e]);
          store16(out + i, v[u]);
        }
      }
    }
    for (; gi < groups; gi += stride) {
      const unsigned int i = gi * E;
      const unsigned int c = i % (unsigned int)C;
      float v[E], bb[E];
      load16(x + i, v);
      load16(bias + c, bb);
#pragma unroll
      for (int e = 0; e < E; ++e) v[e] = gelu(v[e] + bb[e]);
      store16(out + i, v);
    }
    return;
  }
  const long row = blockIdx.x;
  if (row >= rows) return;
  const T* xr = x + row * C;
  T* orow = out + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) store(orow, c, gelu(to_f32(xr[c]) + to_f32(bias[c])));
}

extern "C" __global__ void bias_gelu_f32(const float* x, const float* bias, float* out, int rows, int C, int vec,
                                          int unroll) {
  bias_gelu<float>(x, bias, out, rows, C, vec, unroll);
}

extern "C" __global__ void bias_gelu_bf16(const bf16_t* x, const bf16_t* bias, bf16_t* out, int rows, int C,
                                           int vec, int unroll) {
  bias_gelu<bf16_t>(x, bias, out, rows, C, vec, unroll);
}
