// Fused residual-add + LayerNorm forward (no backward): the frozen layers' "add & norm".
//
//   out[r, :] = (a - mean(a)) / sqrt(var(a) + eps) * gamma + beta,   a = x[r, :] + res[r, :]
//   (res is skipped when has_res == 0; var is the biased variance, as PyTorch)
//
// Shapes: x, res, out (rows, C) row-major contiguous; wb (2, C) = [gamma; beta]. Any C >= 1.
// Dtypes: f32 (add_layer_norm_f32) and bf16 (add_layer_norm_bf16, raw 16-bit storage);
// the sum, statistics and normalisation are accumulated in f32, one rounding at the store.
// One warp per row, 8 rows per 256-thread block. Rows with C <= 1024 are held in registers
// (read once, two-pass mean/variance from registers, written once), with 16-byte vector
// loads/stores when C and the pointers allow (`vec`); wider rows are re-read.
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

// 16-byte vector access: 4 f32 or 8 bf16 per load/store.
template <typename T> struct Vec16;
template <> struct Vec16<float> {
  static constexpr int E = 4;
  static __device__ __forceinline__ void load(const float* p, float* f) {
    const float4 u = *reinterpret_cast<const float4*>(p);
    f[0] = u.x; f[1] = u.y; f[2] = u.z; f[3] = u.w;
  }
  static __device__ __forceinline__ void store(float* p, const float* f) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  }
};
template <> struct Vec16<bf16_t> {
  static constexpr int E = 8;
  static __device__ __forceinline__ void load(const bf16_t* p, float* f) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
  static __device__ __forceinline__ void store(bf16_t* p, const float* f) {
    bf16_t h[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) ::store(h, i, f[i]);
    uint4 u;
    u.x = h[0] | ((unsigned int)h[1] << 16);
    u.y = h[2] | ((unsigned int)h[3] << 16);
    u.z = h[4] | ((unsigned int)h[5] << 16);
    u.w = h[6] | ((unsigned int)h[7] << 16);
    *reinterpret_cast<uint4*>(p) = u;
  }
};

#define LN_MAXV 32  // values per lane held in registers: rows up to 32 * 32 = 1024 wide

template <typename T>
__device__ __forceinline__ void add_layer_norm(const T* __restrict__ x, const T* __restrict__ res,
                                               const T* __restrict__ wb, T* __restrict__ out,
                                               int rows, int C, float eps, int has_res, int vec) {
  const int lane = threadIdx.x & 31;
  const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * C;
  const T* rr = res + row * C;
  T* orow = out + row * C;
  const T* g = wb;
  const T* b = wb + C;
  const float inv_c = 1.0f / (float)C;
  constexpr int E = Vec16<T>::E;
  constexpr int NG = LN_MAXV / E;  // 16-byte groups per lane held in registers
  if (vec) {  // C % E == 0, 16-byte aligned rows, C <= 32 * LN_MAXV
    float v[NG][E];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NG; ++i) {
      const int c = (i * 32 + lane) * E;
      if (c < C) {
        Vec16<T>::load(xr + c, v[i]);
        if (has_res) {
          float rv[E];
          Vec16<T>::load(rr + c, rv);
#pragma unroll
          for (int e = 0; e < E; ++e) v[i][e] += rv[e];
        }
#pragma unroll
        for (int e = 0; e < E; ++e) s += v[i][e];
      }
    }
    const float mean = warp_sum(s) * inv_c;
    float q = 0.0f;
#pragma unroll
    for (int i = 0; i < NG; ++i) {
      const int c = (i * 32 + lane) * E;
      if (c < C) {
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const float d = v[i][e] - mean;
          q += d * d;
        }
      }
    }
    const float rstd = 1.0f / sqrtf(warp_sum(q) * inv_c + eps);
#pragma unroll
    for (int i = 0; i < NG; ++i) {
      const int c = (i * 32 + lane) * E;
      if (c < C) {
        float gv[E], bv[E], o[E];
        Vec16<T>::load(g + c, gv);
        Vec16<T>::load(b + c, bv);
#pragma unroll
        for (int e = 0; e < E; ++e) o[e] = (v[i][e] - mean) * rstd * gv[e] + bv[e];
        Vec16<T>::store(orow + c, o);
      }
    }
  } else if (C <= 32 * LN_MAXV) {
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

// vec = 1 selects 16-byte loads/stores: the caller guarantees C % (16 / sizeof(T)) == 0,
// C <= 1024 and 16-byte aligned x, res, wb, out.
extern "C" __global__ void add_layer_norm_f32(const float* x, const float* res, const float* wb,
                                              float* out, int rows, int C, float eps, int has_res,
                                              int vec) {
  add_layer_norm<float>(x, res, wb, out, rows, C, eps, has_res, vec);
}

extern "C" __global__ void add_layer_norm_bf16(const bf16_t* x, const bf16_t* res, const bf16_t* wb,
                                               bf16_t* out, int rows, int C, float eps, int has_res,
                                               int vec) {
  add_layer_norm<bf16_t>(x, res, wb, out, rows, C, eps, has_res, vec);
}
