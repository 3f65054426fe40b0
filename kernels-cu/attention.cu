// Fused multi-head self-attention forward (no backward), flash-style: QK^T * scale + additive
// padding mask, softmax and PV in one kernel with an online softmax; no T x T matrix is written
// to global memory.
//
//   out[b, i, h*D:(h+1)*D] = sum_j softmax_j(q_i . k_j * scale + mask[b, j]) v_j
//
// Shapes: qkv (B, T, 3 * H * D) row-major contiguous, the output of one fused Q|K|V projection
// (columns [0, C) = queries, [C, 2C) = keys, [2C, 3C) = values, C = H * D, head h at columns
// h*D .. h*D + D of each); mask (B, T) f32 additive (0 = attend, large negative = padding);
// out (B, T, C), i.e. the heads already merged. Head dims D = 32, 64, 128; any T (BERT: <= 512).
// Dtypes: f32 and bf16 (raw 16-bit storage) for qkv/out; scores, softmax statistics and the PV
// accumulator are f32. Entry points: attention_fwd_{f32,bf16}_d{32,64,128}.
// Tiling: a block of 4 warps owns BQ = 4 * R query rows of one (batch, head); each warp owns R
// rows. Keys and values stream through shared memory in tiles of 32 (one key per lane for the
// scores, one output column group per lane for PV).
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

#define NEG_INF __int_as_float(0xff800000)  // -inf (NVRTC has no math.h INFINITY)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename T, int D, int R>
__device__ __forceinline__ void attention_fwd(const T* __restrict__ qkv, const float* __restrict__ mask,
                                              T* __restrict__ out, int T_, int H, float scale) {
  constexpr int NW = 4, BK = 32, BQ = NW * R, DL = D / 32, NT = NW * 32;
  __shared__ float Qs[BQ][D];      // queries of this block, pre-scaled
  __shared__ float Ks[BK][D + 1];  // +1: lanes read different keys at the same d without conflicts
  __shared__ float Vs[BK][D];
  __shared__ float Ps[NW][R][BK];  // each warp's probabilities of the current tile
  __shared__ float Ms[BK];         // the tile's mask (-inf beyond T)
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int C = H * D;
  const long rs = 3L * C;  // row stride of qkv
  const T* base = qkv + (long)b * T_ * rs + (long)h * D;

  for (int i = tid; i < BQ * D; i += NT) {
    const int r = i / D, d = i % D, q = q0 + r;
    Qs[r][d] = q < T_ ? to_f32(base[q * rs + d]) * scale : 0.0f;
  }
  float m[R], l[R], acc[R][DL];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = NEG_INF;
    l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < DL; ++e) acc[r][e] = 0.0f;
  }

  for (int k0 = 0; k0 < T_; k0 += BK) {
    __syncthreads();  // the previous tile is consumed (and Qs is written)
    for (int i = tid; i < BK * D; i += NT) {
      const int j = i / D, d = i % D, k = k0 + j;
      float kv = 0.0f, vv = 0.0f;
      if (k < T_) {
        kv = to_f32(base[k * rs + C + d]);
        vv = to_f32(base[k * rs + 2 * C + d]);
      }
      Ks[j][d] = kv;
      Vs[j][d] = vv;
    }
    if (tid < BK) Ms[tid] = (k0 + tid < T_) ? mask[(long)b * T_ + k0 + tid] : NEG_INF;
    __syncthreads();

    // scores of key (k0 + lane) for this warp's R rows
    float s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.0f;
#pragma unroll 16
    for (int d = 0; d < D; ++d) {
      const float kd = Ks[lane][d];
#pragma unroll
      for (int r = 0; r < R; ++r) s[r] += Qs[w * R + r][d] * kd;
    }
    const float mk = Ms[lane];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sc = (mk == NEG_INF) ? NEG_INF : s[r] + mk;
      const float mn = fmaxf(m[r], warp_max(sc));
      float p = 0.0f, corr = 1.0f;
      if (mn != NEG_INF) {
        p = expf(sc - mn);
        corr = expf(m[r] - mn);  // 0 on the first tile (m = -inf)
      }
      l[r] = l[r] * corr + warp_sum(p);
#pragma unroll
      for (int e = 0; e < DL; ++e) acc[r][e] *= corr;
      Ps[w][r][lane] = p;
      m[r] = mn;
    }
    __syncwarp();
    // PV: lane owns output columns lane + 32 * e
#pragma unroll 8
    for (int j = 0; j < BK; ++j) {
      float v[DL];
#pragma unroll
      for (int e = 0; e < DL; ++e) v[e] = Vs[j][lane + 32 * e];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float p = Ps[w][r][j];
#pragma unroll
        for (int e = 0; e < DL; ++e) acc[r][e] += p * v[e];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int q = q0 + w * R + r;
    if (q < T_) {
      const float inv = 1.0f / l[r];
      T* o = out + ((long)b * T_ + q) * C + (long)h * D;
#pragma unroll
      for (int e = 0; e < DL; ++e) store(o, lane + 32 * e, acc[r][e] * inv);
    }
  }
}

// Launch: grid (ceil(T / (4 * R)), H, B), block 128; R = 8 for D = 32/64, R = 4 for D = 128.
#define ATTN_ENTRY(NAME, TY, D, R)                                                            \
  extern "C" __global__ void NAME(const TY* qkv, const float* mask, TY* out, int T_, int H, \
                                  float scale) {                                          \
    attention_fwd<TY, D, R>(qkv, mask, out, T_, H, scale);                                \
  }

ATTN_ENTRY(attention_fwd_f32_d32, float, 32, 8)
ATTN_ENTRY(attention_fwd_f32_d64, float, 64, 8)
ATTN_ENTRY(attention_fwd_f32_d128, float, 128, 4)
ATTN_ENTRY(attention_fwd_bf16_d32, bf16_t, 32, 8)
ATTN_ENTRY(attention_fwd_bf16_d64, bf16_t, 64, 8)
ATTN_ENTRY(attention_fwd_bf16_d128, bf16_t, 128, 4)
