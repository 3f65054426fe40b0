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

// ---------------------------------------------------------------------------------------------
// Tensor-core variant for bf16 and D = 64 (BERT heads): the same computation with
// mma.sync.m16n8k16 (bf16 inputs, f32 accumulation) for Q K^T and P V, FlashAttention-2 style.
// A block of 4 warps owns 64 query rows (16 per warp) of one (batch, head); keys and values
// stream through shared memory in tiles of 64. Scores, softmax statistics and the output stay in
// registers in the mma accumulator layout (thread holds rows g and g + 8, g = lane / 4); the
// probabilities are rounded to bf16 to feed the P V product (as FlashAttention does).
// Launch: grid (ceil(T / 64), H, B), block 128; qkv rows 16-byte aligned.

__device__ __forceinline__ void mma_bf16_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned bf16_bits(float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}

// (lo, hi) -> one .b32 holding two bf16, the lower index in the lower half
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }

extern "C" __global__ void attention_fwd_bf16_d64_tc(const bf16_t* qkv, const float* mask, bf16_t* out, int T_,
                                                     int H, float scale) {
  constexpr int D = 64, BQ = 64, BK = 64, DP = D + 8;  // rows padded by 16 bytes against bank conflicts
  __shared__ __align__(16) bf16_t Qs[BQ][DP];
  __shared__ __align__(16) bf16_t Ks[BK][DP];
  __shared__ __align__(16) bf16_t Vs[BK][DP];
  __shared__ float Ms[BK];
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int g = lane >> 2, q4 = lane & 3;
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int C = H * D;
  const long rs = 3L * C;
  const bf16_t* base = qkv + (long)b * T_ * rs + (long)h * D;

  for (int i = tid; i < BQ * (D / 8); i += 128) {
    const int r = i / (D / 8), c8 = (i % (D / 8)) * 8, q = q0 + r;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (q < T_) v = *reinterpret_cast<const uint4*>(base + (long)q * rs + c8);
    *reinterpret_cast<uint4*>(&Qs[r][c8]) = v;
  }
  __syncthreads();
  const int r0 = w * 16 + g;
  unsigned qa[4][4];  // A fragments of this warp's 16 query rows, 4 k-steps of 16 over D
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    const int c = ks * 16 + q4 * 2;
    qa[ks][0] = *reinterpret_cast<const unsigned*>(&Qs[r0][c]);
    qa[ks][1] = *reinterpret_cast<const unsigned*>(&Qs[r0 + 8][c]);
    qa[ks][2] = *reinterpret_cast<const unsigned*>(&Qs[r0][c + 8]);
    qa[ks][3] = *reinterpret_cast<const unsigned*>(&Qs[r0 + 8][c + 8]);
  }
  float o[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;  // rows g and g + 8

  for (int k0 = 0; k0 < T_; k0 += BK) {
    __syncthreads();  // the previous tile is consumed
    for (int i = tid; i < BK * (D / 8); i += 128) {
      const int r = i / (D / 8), c8 = (i % (D / 8)) * 8, k = k0 + r;
      uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = make_uint4(0u, 0u, 0u, 0u);
      if (k < T_) {
        kv = *reinterpret_cast<const uint4*>(base + (long)k * rs + C + c8);
        vv = *reinterpret_cast<const uint4*>(base + (long)k * rs + 2 * C + c8);
      }
      *reinterpret_cast<uint4*>(&Ks[r][c8]) = kv;
      *reinterpret_cast<uint4*>(&Vs[r][c8]) = vv;
    }
    if (tid < BK) Ms[tid] = (k0 + tid < T_) ? mask[(long)b * T_ + k0 + tid] : NEG_INF;
    __syncthreads();

    // S = Q K^T for 64 keys: 8 n-tiles of 8 keys
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        const unsigned b0 = *reinterpret_cast<const unsigned*>(&Ks[nt * 8 + g][ks * 16 + q4 * 2]);
        const unsigned b1 = *reinterpret_cast<const unsigned*>(&Ks[nt * 8 + g][ks * 16 + q4 * 2 + 8]);
        mma_bf16_16816(s[nt], qa[ks], b0, b1);
      }
    }
    float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float mk = Ms[nt * 8 + q4 * 2 + e];
        s[nt][e] = (mk == NEG_INF) ? NEG_INF : s[nt][e] * scale + mk;
        s[nt][2 + e] = (mk == NEG_INF) ? NEG_INF : s[nt][2 + e] * scale + mk;
        mx0 = fmaxf(mx0, s[nt][e]);
        mx1 = fmaxf(mx1, s[nt][2 + e]);
      }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float c0 = (mn0 == NEG_INF) ? 1.0f : expf(m0 - mn0);
    const float c1 = (mn1 == NEG_INF) ? 1.0f : expf(m1 - mn1);
    float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = (mn0 == NEG_INF) ? 0.0f : expf(s[nt][e] - mn0);
        s[nt][2 + e] = (mn1 == NEG_INF) ? 0.0f : expf(s[nt][2 + e] - mn1);
        ls0 += s[nt][e];
        ls1 += s[nt][2 + e];
      }
    }
    ls0 += __shfl_xor_sync(0xffffffffu, ls0, 1);
    ls0 += __shfl_xor_sync(0xffffffffu, ls0, 2);
    ls1 += __shfl_xor_sync(0xffffffffu, ls1, 1);
    ls1 += __shfl_xor_sync(0xffffffffu, ls1, 2);
    l0 = l0 * c0 + ls0;
    l1 = l1 * c1 + ls1;
    m0 = mn0;
    m1 = mn1;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      o[nt][0] *= c0;
      o[nt][1] *= c0;
      o[nt][2] *= c1;
      o[nt][3] *= c1;
    }
    // O += P V: 4 k-steps of 16 keys, 8 n-tiles of 8 output columns
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      unsigned pa[4];
      pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const int kr = kk * 16 + q4 * 2;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int dc = nt * 8 + g;
        const unsigned b0 = (unsigned)Vs[kr][dc] | ((unsigned)Vs[kr + 1][dc] << 16);
        const unsigned b1 = (unsigned)Vs[kr + 8][dc] | ((unsigned)Vs[kr + 9][dc] << 16);
        mma_bf16_16816(o[nt], pa, b0, b1);
      }
    }
  }

  const float i0 = 1.0f / l0, i1 = 1.0f / l1;
  const int qa0 = q0 + r0, qa1 = qa0 + 8;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const int col = h * D + nt * 8 + q4 * 2;
    if (qa0 < T_)
      *reinterpret_cast<unsigned*>(out + ((long)b * T_ + qa0) * C + col) = pack_bf16(o[nt][0] * i0, o[nt][1] * i0);
    if (qa1 < T_)
      *reinterpret_cast<unsigned*>(out + ((long)b * T_ + qa1) * C + col) = pack_bf16(o[nt][2] * i1, o[nt][3] * i1);
  }
}
