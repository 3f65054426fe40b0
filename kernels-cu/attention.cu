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
// The same rounding (to nearest even) in one instruction, cvt.rn.bf16x2.f32 (sm_80+); the integer
// rounding of pack_bf16 compiles to about ten per pair. Used by the V2 fa2 kernels.
__device__ __forceinline__ unsigned pack_bf16_cvt(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));  // a -> upper half, b -> lower
  return r;
}

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

// ---------------------------------------------------------------------------------------------
// attention_fwd_bf16_d64_fa2: the tensor-core kernel above reworked after FlashAttention-2:
//  - ldmatrix.x4 loads the Q and K fragments, and (.trans) the V fragments, from shared memory
//    (the _tc kernel assembles them from 32- and 16-bit shared loads);
//  - K/V tiles are double-buffered with cp.async: the next live tile streams in while the
//    current one is computed;
//  - the softmax runs in base 2 (ex2.approx) on scores pre-scaled by log2(e): s * scale*log2e +
//    mask*log2e, the row sums stay per lane until the end;
//  - key tiles in which every key is padding (additive mask <= -1e8; mslt and the checks use
//    -1e9) are skipped whenever the batch row has a key that is not padding. Their
//    probabilities are exp(-1e9 + score differences), exactly 0 in f32 for any score difference
//    below ~1e8, so the result is the same. A batch row whose keys are all padding processes
//    every tile, but its output is not specified: near -1e9 f32 has a spacing of 64 (128 after
//    the log2(e) scaling), so the scores that decide such a softmax are rounded away, here and in
//    the reference alike, differently (mslt never builds such a row: every sequence has [CLS]).
// Same layout, mask convention and accumulation (f32) as attention_fwd_bf16_d64_tc; the
// probabilities are rounded to bf16 for P V. Block: 4 or 8 warps of one (batch, head); qkv rows
// 16-byte aligned. Entry points: attention_fwd_bf16_d64_fa2 (16 query rows per warp, 64 per
// block, key tiles of 64), attention_fwd_bf16_d64_fa2_q128 (32 rows per warp, 128 per block, key
// tiles of 32), and the V2 variants with fewer instructions per tile (cvt.rn.bf16x2 packing,
// compile-time tile loads, Q read before the loop): attention_fwd_bf16_d64_fa2_v2 (as _fa2) and
// attention_fwd_bf16_d64_fa2_w8 (8 warps, 128 rows per block, key tiles of 64).

#define PAD_MASK (-1.0e8f)

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  unsigned r;
  asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// waits until at most one committed group is still in flight
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
// waits until every committed group has landed
__device__ __forceinline__ void cp_async_wait0() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Four 8x8 b16 matrices; lane l gives the address of row (l % 8) of matrix (l / 8). Lane t gets,
// in r[m], elements (t / 4, 2 (t % 4) + {0, 1}) of matrix m, or with .trans (2 (t % 4) + {0, 1}, t / 4).
__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}
// The same three with the address already in the shared window (32 bits, smem_u32): the v4
// kernels keep their tile addresses so, one base per tile plus constants, where a generic pointer
// costs a 64-bit add, its carry and a move per ldmatrix / cp.async.
__device__ __forceinline__ void ldsm_x4(unsigned* r, unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
// A tile of rows of 72 bf16 (64 columns + 8 of padding) in shared memory, by its address in the
// shared window (see above); tile_at: the address of element (r, c), for a tile given so or as
// a pointer (then a generic pointer, as before).
struct Tile72 {
  unsigned a;
};
// (row, column) = (r + rl, c + cl): r, c the same for every lane (compile-time after unrolling),
// rl, cl the lane's part, added to the base first so that r, c fold into the instruction's offset
__device__ __forceinline__ unsigned tile_at(Tile72 t, int r, int c, int rl, int cl) {
  return (t.a + (unsigned)(rl * 72 + cl) * 2u) + (unsigned)(r * 72 + c) * 2u;
}
__device__ __forceinline__ const void* tile_at(const bf16_t (*t)[72], int r, int c, int rl, int cl) {
  return &t[r + rl][c + cl];
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The first tile index >= j that is processed: tiles past the 32 tracked ones always are.
__device__ __forceinline__ int next_live(int j, int ntiles, unsigned live) {
  if (live == 0u) return j;  // only padding keys: nothing is skipped
  while (j < ntiles && j < 32 && !((live >> j) & 1u)) ++j;
  return j;
}

#define LOG2E_F 1.4426950408889634f
#define FLT_MAX_F 3.402823466e+38f  // a mask scaled by log2(e) stays finite (f32::MIN * log2(e) would be -inf)

// bit j: key tile j (BK keys, j < 32) holds a key that is not padding. Block-uniform: every
// thread of the block calls it (BK <= blockDim.x).
__device__ __forceinline__ unsigned live_tiles(const float* __restrict__ mrow, int T_, int BK, int ntiles) {
  const int tid = threadIdx.x;
  unsigned bits = 0u;
  for (int j = 0; j < ntiles && j < 32; ++j) {
    const int k = j * BK + tid;
    if (__syncthreads_or(tid < BK && k < T_ && mrow[k] > PAD_MASK)) bits |= 1u << j;
  }
  return bits;
}

// Key tile jt (keys jt BK .. jt BK + BK) of one (batch, head) -> buffer bf of Ks, Vs (cp.async,
// 16-byte chunks, zero rows beyond T) and of Ms (mask * log2(e), -inf beyond T); run by all NTH
// threads of the block. Expects in scope: tid, NTH, base (the (batch, head) start of qkv), rs (its
// row stride), C, T_, mrow, BK, D and the shared arrays Ks, Vs, Ms. T: the element type; SH = log2(D / (16 bytes
// / sizeof(T))), the 16-byte chunks per row. (A macro: as an inline function the same code takes
// 130 registers instead of 128 in the bf16 kernel on sm_90, i.e. 3 blocks per SM instead of 4.)
#define LOAD_KV_TILE(T, SH, jt, bf)                                                        \
  do {                                                                                     \
    const int k0_ = (jt) * BK;                                                             \
    constexpr int E_ = 16 / sizeof(T);                                                     \
    static_assert(D / E_ == (1 << (SH)), "chunks per row");                                \
    for (int i = tid; i < BK * (D / E_); i += NTH) {                                       \
      const int r = i >> (SH), c = (i & ((1 << (SH)) - 1)) * E_, k = k0_ + r;              \
      const T* src = base + (long)(k < T_ ? k : 0) * rs + C + c;                           \
      cp_async16(&Ks[bf][r][c], src, k < T_);                                              \
      cp_async16(&Vs[bf][r][c], src + C, k < T_);                                          \
    }                                                                                      \
    if (tid < BK) Ms[bf][tid] = (k0_ + tid < T_) ? fmaxf(mrow[k0_ + tid] * LOG2E_F, -FLT_MAX_F) : NEG_INF; \
  } while (0)

// LOAD_KV_TILE with the trip count known at compile time (BK * D / 8 chunks over NTH threads,
// NTH dividing it): each thread issues its cp.async with no loop or bounds test, where the loop
// above compiles to a generic unrolled loop with a remainder (~250 instructions per tile in the
// fa2 kernel). Used by the V2 fa2 kernels.
#define LOAD_KV_TILE_U(T, SH, jt, bf)                                                      \
  do {                                                                                     \
    const int k0_ = (jt) * BK;                                                             \
    constexpr int E_ = 16 / sizeof(T);                                                     \
    constexpr int N_ = BK * (D / E_);                                                      \
    static_assert(D / E_ == (1 << (SH)), "chunks per row");                                \
    static_assert(N_ % NTH == 0, "whole chunks per thread");                               \
    _Pragma("unroll") for (int it_ = 0; it_ < N_ / NTH; ++it_) {                           \
      const int i = tid + it_ * NTH;                                                       \
      const int r = i >> (SH), c = (i & ((1 << (SH)) - 1)) * E_, k = k0_ + r;              \
      const T* src = base + (long)(k < T_ ? k : 0) * rs + C + c;                           \
      cp_async16(&Ks[bf][r][c], src, k < T_);                                              \
      cp_async16(&Vs[bf][r][c], src + C, k < T_);                                          \
    }                                                                                      \
    if (tid < BK) Ms[bf][tid] = (k0_ + tid < T_) ? fmaxf(mrow[k0_ + tid] * LOG2E_F, -FLT_MAX_F) : NEG_INF; \
  } while (0)

// Dropout on the attention probabilities (the _dropout entry points), as BERT applies it in
// train mode: out_i = sum_j softmax_i(j) * keep(i, j) / (1 - p) v_j. The softmax normaliser
// counts every key (the row sums take the probabilities before dropout). keep(i, j) for batch
// row b, head h, query i and key j is a counter-based draw, a function of (seed, b, h, i, j)
// alone: word 2 * bit3(i) + bit0(j) of Philox4x32-10 (Salmon et al. 2011, Random123) with key
// (seed low, seed high) and counter (j >> 1, i & ~8, h, b) is at least thr = round(p 2^32).
// Rows g, g + 8 and keys 2 q4, 2 q4 + 1 of one lane's mma accumulator tile share one counter,
// so each lane makes one Philox call per n-tile of 8 keys for its 4 elements.
// mslt_kernels::philox (Rust) defines the same draw for the CPU op and the checks.
struct Dropout {
  unsigned k0, k1;  // Philox key: the seed's low and high words
  unsigned thr;     // keep iff word >= thr
  float scale;      // 1 / (1 - p)
};

__device__ __forceinline__ void philox4x32_10(unsigned (&c)[4], unsigned k0, unsigned k1) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const unsigned lo0 = 0xD2511F53u * c[0], hi0 = __umulhi(0xD2511F53u, c[0]);
    const unsigned lo1 = 0xCD9E8D57u * c[2], hi1 = __umulhi(0xCD9E8D57u, c[2]);
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// Dropout on one lane's 4 accumulator elements of an n-tile (rows row0 = the m-tile's row g and
// row0 + 8, keys key0 = 2 q4 + the n-tile's first key and key0 + 1), after the softmax made
// them probabilities (unnormalised) and before they feed P V.
__device__ __forceinline__ void drop4(float (&s)[4], const Dropout& dr, int row0, int key0, int h, int b) {
  unsigned c[4] = {(unsigned)key0 >> 1, (unsigned)row0, (unsigned)h, (unsigned)b};
  philox4x32_10(c, dr.k0, dr.k1);
#pragma unroll
  for (int e = 0; e < 4; ++e) s[e] = c[e] >= dr.thr ? s[e] * dr.scale : 0.0f;
}

// One key tile of the base-2 online softmax for rows g and g + 8 of an m16 tile: the scores s
// (NKT n-tiles of 8 keys, mma accumulator layout, raw q.k) become probabilities in place; the
// running maxima m0, m1 and this lane's partial row sums l0, l1 are updated and the output o
// (8 n-tiles) rescaled. ms: the tile's mask * log2(e). APPROX: ex2.approx, else exp2f.
// softmax_scores is all of it but the rescaling of o, whose factors it returns in c0, c1 (the
// pipelined wgmma kernels rescale o later, once the O += P V in flight has landed in it).
template <int NKT, bool APPROX>
__device__ __forceinline__ void softmax_scores(float (&s)[NKT][4], const float* ms, int q4, float sl2, float& m0,
                                               float& m1, float& l0, float& l1, float& c0, float& c1) {
  float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float mk = ms[nt * 8 + q4 * 2 + e];
      s[nt][e] = fmaf(s[nt][e], sl2, mk);
      s[nt][2 + e] = fmaf(s[nt][2 + e], sl2, mk);
      mx0 = fmaxf(mx0, s[nt][e]);
      mx1 = fmaxf(mx1, s[nt][2 + e]);
    }
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
  const float mu0 = (mn0 == NEG_INF) ? 0.0f : mn0, mu1 = (mn1 == NEG_INF) ? 0.0f : mn1;
  c0 = APPROX ? ex2(m0 - mu0) : exp2f(m0 - mu0);  // 0 while nothing was seen (o, l are 0)
  c1 = APPROX ? ex2(m1 - mu1) : exp2f(m1 - mu1);
  float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[nt][e] = APPROX ? ex2(s[nt][e] - mu0) : exp2f(s[nt][e] - mu0);
      s[nt][2 + e] = APPROX ? ex2(s[nt][2 + e] - mu1) : exp2f(s[nt][2 + e] - mu1);
      ls0 += s[nt][e];
      ls1 += s[nt][2 + e];
    }
  }
  l0 = l0 * c0 + ls0;
  l1 = l1 * c1 + ls1;
  m0 = mn0;
  m1 = mn1;
}

// o (8 n-tiles, rows g and g + 8) *= c0 (row g), c1 (row g + 8)
__device__ __forceinline__ void rescale_rows(float (&o)[8][4], float c0, float c1) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    o[nt][0] *= c0;
    o[nt][1] *= c0;
    o[nt][2] *= c1;
    o[nt][3] *= c1;
  }
}

template <int NKT, bool APPROX>
__device__ __forceinline__ void softmax_tile(float (&s)[NKT][4], const float* ms, int q4, float sl2, float& m0,
                                             float& m1, float& l0, float& l1, float (&o)[8][4]) {
  float c0, c1;
  softmax_scores<NKT, APPROX>(s, ms, q4, sl2, m0, m1, l0, l1, c0, c1);
  rescale_rows(o, c0, c1);
}

__device__ __forceinline__ void store_pair(bf16_t* p, float a, float b) {
  *reinterpret_cast<unsigned*>(p) = pack_bf16(a, b);
}
__device__ __forceinline__ void store_pair(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }

// bf16 pair by cvt.rn.bf16x2 (the same rounding to nearest even as pack_bf16, one instruction)
__device__ __forceinline__ void store_pair_cvt(bf16_t* p, float a, float b) {
  *reinterpret_cast<unsigned*>(p) = pack_bf16_cvt(a, b);
}
__device__ __forceinline__ void store_pair_cvt(float* p, float a, float b) { store_pair(p, a, b); }

// o / l for query rows qa0 (the m16 tile's row g) and qa0 + 8 -> out (B, T, C), columns
// col0 + 8 nt + 2 q4 + {0, 1}; l0, l1 are this lane's partial sums (summed over the quad here).
// CVT: bf16 packed by cvt.rn.bf16x2 (fa2p; the kernels measured in runs 5-6 keep pack_bf16's
// integer rounding, about 17 instructions per pair).
template <typename T, bool CVT = false>
__device__ __forceinline__ void store_rows(const float (&o)[8][4], float l0, float l1, T* __restrict__ out, int b,
                                           int T_, int C, int col0, int qa0, int q4) {
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float i0 = 1.0f / l0, i1 = 1.0f / l1;
  const int qa1 = qa0 + 8;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const int col = col0 + nt * 8 + q4 * 2;
    if (qa0 < T_) {
      if (CVT)
        store_pair_cvt(out + ((long)b * T_ + qa0) * C + col, o[nt][0] * i0, o[nt][1] * i0);
      else
        store_pair(out + ((long)b * T_ + qa0) * C + col, o[nt][0] * i0, o[nt][1] * i0);
    }
    if (qa1 < T_) {
      if (CVT)
        store_pair_cvt(out + ((long)b * T_ + qa1) * C + col, o[nt][2] * i1, o[nt][3] * i1);
      else
        store_pair(out + ((long)b * T_ + qa1) * C + col, o[nt][2] * i1, o[nt][3] * i1);
    }
  }
}

// One key tile of attention_fa2p (below) for one warp: the loop body of attention_fa2 as
// functions. (attention_fa2 keeps its own copy: with the call, ptxas orders the instructions of
// the kernels measured in runs 5 and 6 differently, and _fa2_w8_dropout spills on sm_90.)
// fa2_qk: S = Q K^T for the warp's MT m-tiles of 16 query rows (Q fragments qa); fa2_softmax_pv:
// the base-2 online softmax (running max m, partial sums l, output o rescaled), dropout on the
// probabilities (DROP), then O += P V; fa2_tile: both. Kt, Vt: the tile's BK keys and values in
// shared memory (rows of DP = 72 elements); ms: their mask * log2(e). g, q4: the lane's
// accumulator rows g, g + 8 and columns 2 q4 + {0, 1}; lm, lr: its ldmatrix matrix and row. row0:
// the warp's first query row in the sequence; key0: the tile's first key.
template <int MT, int BK, class KT>
__device__ __forceinline__ void fa2_qk(float (&s)[MT][BK / 8][4], KT Kt, const unsigned (&qa)[MT][4][4], int lm,
                                       int lr) {
  constexpr int NKT = BK / 8;  // n-tiles of 8 keys in S = Q K^T
  // S = Q K^T: NKT n-tiles of 8 keys; one ldmatrix.x4 = the B fragments of 2 k-steps
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      unsigned kb[4];
      ldsm_x4(kb, tile_at(Kt, nt * 8, p * 32, lr, lm * 8));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_bf16_16816(s[mt][nt], qa[mt][2 * p], kb[0], kb[1]);
        mma_bf16_16816(s[mt][nt], qa[mt][2 * p + 1], kb[2], kb[3]);
      }
    }
  }
}

// The rest of a key tile after S: the base-2 online softmax (running max m, partial sums l, output
// o rescaled), dropout on the probabilities (DROP), then O += P V with Vt's fragments.
template <int MT, int BK, bool V2, bool DROP, class VT>
__device__ __forceinline__ void fa2_softmax_pv(float (&s)[MT][BK / 8][4], VT Vt, const float* ms,
                                               float (&o)[MT][8][4], float (&m)[MT][2], float (&l)[MT][2], float sl2,
                                               int g, int q4, int lm, int lr, int row0, int key0, int h, int b,
                                               Dropout dr) {
  constexpr int NKT = BK / 8;   // n-tiles of 8 keys in S = Q K^T
  constexpr int KKS = BK / 16;  // k-steps of 16 keys in O += P V
  // online softmax in base 2, per m-tile
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    softmax_tile<NKT, true>(s[mt], ms, q4, sl2, m[mt][0], m[mt][1], l[mt][0], l[mt][1], o[mt]);
  static_assert(!DROP || V2, "dropout in the V2 kernels only");
  // O += P V: KKS k-steps of 16 keys; one ldmatrix.x4.trans = the B fragments of 2 n-tiles
#pragma unroll
  for (int kk = 0; kk < KKS; ++kk) {
    unsigned pa[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (DROP) {  // the two n-tiles of 8 keys this k-step packs
        drop4(s[mt][2 * kk], dr, row0 + mt * 16 + g, key0 + kk * 16 + 2 * q4, h, b);
        drop4(s[mt][2 * kk + 1], dr, row0 + mt * 16 + g, key0 + kk * 16 + 8 + 2 * q4, h, b);
      }
      pa[mt][0] = V2 ? pack_bf16_cvt(s[mt][2 * kk][0], s[mt][2 * kk][1]) : pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      pa[mt][1] = V2 ? pack_bf16_cvt(s[mt][2 * kk][2], s[mt][2 * kk][3]) : pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      pa[mt][2] = V2 ? pack_bf16_cvt(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1])
                     : pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      pa[mt][3] = V2 ? pack_bf16_cvt(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3])
                     : pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      unsigned vb[4];
      ldsm_x4_trans(vb, tile_at(Vt, kk * 16, 2 * np * 8, (lm & 1) * 8 + lr, (lm >> 1) * 8));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_bf16_16816(o[mt][2 * np], pa[mt], vb[0], vb[1]);
        mma_bf16_16816(o[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
      }
    }
  }
}

template <int MT, int BK, bool V2, bool DROP, class KT>
__device__ __forceinline__ void fa2_tile(KT Kt, KT Vt, const float* ms,
                                         const unsigned (&qa)[MT][4][4], float (&o)[MT][8][4], float (&m)[MT][2],
                                         float (&l)[MT][2], float sl2, int g, int q4, int lm, int lr, int row0,
                                         int key0, int h, int b, Dropout dr) {
  float s[MT][BK / 8][4];
  fa2_qk<MT, BK>(s, Kt, qa, lm, lr);
  fa2_softmax_pv<MT, BK, V2, DROP>(s, Vt, ms, o, m, l, sl2, g, q4, lm, lr, row0, key0, h, b, dr);
}

// MT m-tiles of 16 query rows per warp, NW warps: BQ = 16 NW MT query rows per block, key tiles of
// BK = 64 / MT. With MT = 2 each K/V fragment loaded from shared memory feeds two mma and each K/V
// tile serves twice the query rows (half the L2 traffic), for more registers per thread. With
// NW = 8 each K/V tile also serves twice the rows, at 128 registers (2 blocks, 16 warps per SM
// as with NW = 4), and each thread issues half the tile loads. Static shared memory stays under
// 48 KB: 46.6 KB for (MT, NW) = (1, 4), 36.9 KB for (2, 4); for (1, 8) the Q tile (128 rows) lies
// over the two K buffers, read into registers before the first K/V tile is loaded (37.4 KB).
template <int MT, int NW, bool V2, bool DROP = false>
__device__ __forceinline__ void attention_fa2(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                              bf16_t* __restrict__ out, int T_, int H, float scale,
                                              Dropout dr = Dropout{}) {
  constexpr int D = 64, BQ = 16 * NW * MT, BK = 64 / MT, DP = D + 8;  // rows padded by 16 bytes: no bank conflicts
  constexpr int NTH = 32 * NW;  // threads per block
  constexpr int NKT = BK / 8;   // n-tiles of 8 keys in S = Q K^T
  constexpr int KKS = BK / 16;  // k-steps of 16 keys in O += P V
  constexpr bool ALIAS_Q = NW == 8;  // Q tile over Ks (the same bytes: BQ = 2 BK)
  static_assert(!ALIAS_Q || V2, "the Q tile is read before the loop");
  static_assert(!ALIAS_Q || BQ == 2 * BK, "Q tile = both K buffers");
  __shared__ __align__(16) bf16_t Ks[2][BK][DP];
  __shared__ __align__(16) bf16_t Vs[2][BK][DP];
  __shared__ __align__(16) bf16_t Qown[ALIAS_Q ? 1 : BQ][DP];
  bf16_t(*Qs)[DP] = ALIAS_Q ? reinterpret_cast<bf16_t(*)[DP]>(&Ks[0][0][0]) : Qown;
  __shared__ float Ms[2][BK];  // mask * log2(e) of the tile's keys, -inf beyond T
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int g = lane >> 2, q4 = lane & 3;  // accumulator rows g and g + 8, columns 2 q4 + {0, 1}
  const int lm = lane >> 3, lr = lane & 7;  // ldmatrix: this lane addresses row lr of matrix lm
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int C = H * D;
  const long rs = 3L * C;
  const bf16_t* base = qkv + (long)b * T_ * rs + (long)h * D;
  const float* mrow = mask + (long)b * T_;
  const float sl2 = scale * LOG2E_F;
  const int ntiles = (T_ + BK - 1) / BK;

  const unsigned live = live_tiles(mrow, T_, BK, ntiles);

  unsigned qa[MT][4][4];  // A fragments of this warp's query rows: m-tile, 4 k-steps of 16 over D
  // Q tile (zero rows beyond T), then the first live K/V tile: one cp.async group (with ALIAS_Q:
  // Q alone, read into registers, then the K/V tile into the bytes it held)
  for (int i = tid; i < BQ * (D / 8); i += NTH) {
    const int r = i >> 3, c8 = (i & 7) * 8, q = q0 + r;
    cp_async16(&Qs[r][c8], base + (long)(q < T_ ? q : 0) * rs + c8, q < T_);
  }
  // V2: the Q fragments are read before the loop (no first-iteration branch in it), at the cost
  // of not overlapping the Q load with the first K/V tile's
  bool first = !V2;
  if (V2) {
    cp_async_commit();
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        ldsm_x4(qa[mt][ks], &Qs[(w * MT + mt) * 16 + (lm & 1) * 8 + lr][ks * 16 + (lm >> 1) * 8]);
    if (ALIAS_Q) __syncthreads();  // every warp has its Q fragments before Ks is overwritten
  }
  int j = next_live(0, ntiles, live);
  int buf = 0;
  if (j < ntiles) {
    if (V2)
      LOAD_KV_TILE_U(bf16_t, 3, j, 0);
    else
      LOAD_KV_TILE(bf16_t, 3, j, 0);
  }
  cp_async_commit();

  float o[MT][8][4];      // output accumulators: m-tile, 8 n-tiles of 8 columns
  float m[MT][2], l[MT][2];  // running max (log2 units) and this lane's partial sums, rows g, g + 8
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.0f;
    m[mt][0] = m[mt][1] = NEG_INF;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  while (j < ntiles) {
    const int jn = next_live(j + 1, ntiles, live);
    if (jn < ntiles) {
      if (V2)
        LOAD_KV_TILE_U(bf16_t, 3, jn, buf ^ 1);
      else
        LOAD_KV_TILE(bf16_t, 3, jn, buf ^ 1);
    }
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = tile j
    cp_async_wait1();
    __syncthreads();
    if (!V2 && first) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          ldsm_x4(qa[mt][ks], &Qs[(w * MT + mt) * 16 + (lm & 1) * 8 + lr][ks * 16 + (lm >> 1) * 8]);
      first = false;
    }
    // S = Q K^T: NKT n-tiles of 8 keys; one ldmatrix.x4 = the B fragments of 2 k-steps
    float s[MT][NKT][4];
#pragma unroll
    for (int nt = 0; nt < NKT; ++nt) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        unsigned kb[4];
        ldsm_x4(kb, &Ks[buf][nt * 8 + lr][p * 32 + lm * 8]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16_16816(s[mt][nt], qa[mt][2 * p], kb[0], kb[1]);
          mma_bf16_16816(s[mt][nt], qa[mt][2 * p + 1], kb[2], kb[3]);
        }
      }
    }
    // online softmax in base 2, per m-tile
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      softmax_tile<NKT, true>(s[mt], Ms[buf], q4, sl2, m[mt][0], m[mt][1], l[mt][0], l[mt][1], o[mt]);
    static_assert(!DROP || V2, "dropout in the V2 kernels only");
    // O += P V: KKS k-steps of 16 keys; one ldmatrix.x4.trans = the B fragments of 2 n-tiles
#pragma unroll
    for (int kk = 0; kk < KKS; ++kk) {
      unsigned pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (DROP) {  // the two n-tiles of 8 keys this k-step packs
          drop4(s[mt][2 * kk], dr, q0 + (w * MT + mt) * 16 + g, j * BK + kk * 16 + 2 * q4, h, b);
          drop4(s[mt][2 * kk + 1], dr, q0 + (w * MT + mt) * 16 + g, j * BK + kk * 16 + 8 + 2 * q4, h, b);
        }
        pa[mt][0] = V2 ? pack_bf16_cvt(s[mt][2 * kk][0], s[mt][2 * kk][1]) : pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = V2 ? pack_bf16_cvt(s[mt][2 * kk][2], s[mt][2 * kk][3]) : pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = V2 ? pack_bf16_cvt(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1])
                       : pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = V2 ? pack_bf16_cvt(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3])
                       : pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        unsigned vb[4];
        ldsm_x4_trans(vb, &Vs[buf][kk * 16 + (lm & 1) * 8 + lr][(2 * np + (lm >> 1)) * 8]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16_16816(o[mt][2 * np], pa[mt], vb[0], vb[1]);
          mma_bf16_16816(o[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // tile j consumed before its buffer is refilled
    buf ^= 1;
    j = jn;
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    store_rows(o[mt], l[mt][0], l[mt][1], out, b, T_, C, h * D, q0 + (w * MT + mt) * 16 + g, q4);
}

// Launch: grid (ceil(T / 64), H, B), block 128.
extern "C" __global__ void __launch_bounds__(128) attention_fwd_bf16_d64_fa2(const bf16_t* qkv, const float* mask,
                                                                             bf16_t* out, int T_, int H, float scale) {
  attention_fa2<1, 4, false>(qkv, mask, out, T_, H, scale);
}

// Launch: grid (ceil(T / 128), H, B), block 128.
extern "C" __global__ void __launch_bounds__(128) attention_fwd_bf16_d64_fa2_q128(const bf16_t* qkv, const float* mask,
                                                                                  bf16_t* out, int T_, int H, float scale) {
  attention_fa2<2, 4, false>(qkv, mask, out, T_, H, scale);
}

// An attention_fa2 (V2) / attention_fa2p / attention_fa2wg entry point NAME (FN<A, false>) and its twin NAME_dropout
// (FN<A, true>, dropout on the probabilities, see Dropout), launched alike: NTH threads, at least
// MINB blocks per SM (128 registers per thread).
#define FA2_ENTRY_PAIR(NAME, NTH, MINB, FN, A) FA2_ENTRY_PAIR2(NAME, NTH, MINB, MINB, FN, A)
// The same with MINB_DROP blocks per SM for the _dropout twin (fa2wg3 / fa2wg4: at the 128
// registers of MINB, ptxas spills their Philox draws)
#define FA2_ENTRY_PAIR2(NAME, NTH, MINB, MINB_DROP, FN, A)                                              \
  extern "C" __global__ void __launch_bounds__(NTH, MINB)                                                \
      NAME(const bf16_t* qkv, const float* mask, bf16_t* out, int T_, int H, float scale) {             \
    FN<A, false>(qkv, mask, out, T_, H, scale);                                                          \
  }                                                                                                      \
  extern "C" __global__ void __launch_bounds__(NTH, MINB_DROP)                                           \
      NAME##_dropout(const bf16_t* qkv, const float* mask, bf16_t* out, int T_, int H, float scale,      \
                     unsigned long long seed, unsigned thr, float keep_scale) {                          \
    FN<A, true>(qkv, mask, out, T_, H, scale, Dropout{(unsigned)seed, (unsigned)(seed >> 32), thr, keep_scale}); \
  }

// attention_fa2 with one m-tile per warp and the V2 loop, NW warps (the fa2v2 / fa2w8 entry points)
template <int NW, bool DROP>
__device__ __forceinline__ void attention_fa2_v2(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                                 bf16_t* __restrict__ out, int T_, int H, float scale,
                                                 Dropout dr = Dropout{}) {
  attention_fa2<1, NW, true, DROP>(qkv, mask, out, T_, H, scale, dr);
}
// Launch: grid (ceil(T / 64), H, B), block 128; at most 128 registers per thread (4 blocks per SM).
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_v2, 128, 4, attention_fa2_v2, 4)
// Launch: grid (ceil(T / 128), H, B), block 256 (8 warps of 16 query rows; at most 128 registers
// per thread so that two blocks fit an SM).
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_w8, 256, 2, attention_fa2_v2, 8)

// ---------------------------------------------------------------------------------------------
// attention_fwd_bf16_d64_fa2_v3 / _w8v3 ("fa2v3", "fa2w8v3"): fa2v2 and fa2w8 (V2, one m-tile of
// 16 query rows per warp, key tiles of 64) with the global-memory latency taken off the critical
// path, for T <= 512 (BERT's longest sequence). Read off their machine code, the V2 kernels wait
// on a global load in every key tile and in a serial prologue:
//  - LOAD_KV_TILE reads the tile's mask with a plain load and stores it to shared memory before
//    the barrier that starts the tile: every tile, the whole block waits one L2 round trip;
//  - live_tiles makes one load and one barrier per key tile (8 in a row at T = 512) before the
//    first copy is issued, and the Q tile is waited for before the first K/V tile is requested.
// Here the Q tile and key tile 0 are requested together (two cp.async groups), the mask row is
// read once into registers meanwhile (all loads in flight together), scaled into shared memory
// (Mrow, -inf beyond T) and reduced to the live-tile bits with one warp reduction and the barrier
// the Q tile needs anyway; the loop then reads nothing from global memory but its cp.async tiles.
// Key tile 0 is always processed (no wait for the live bits): when all its keys are padding its
// probabilities are exactly 0 and the running max it leaves is wiped by the first live tile
// (ex2(-1.4e9) = 0), the same result as skipping it. With 8 warps the Q tile (128 rows) lies over
// key tile buffer 1 (K and V, 18 KB), read into registers before tile 1 is requested, so tile 0
// still streams into buffer 0 while Q lands. T must be <= 512 (MAXT; the caller checks).
#define FA2P_MAXT 512

// The mask row of batch row mrow (T <= FA2P_MAXT) -> Mrow (mask * log2(e), clamped to -FLT_MAX;
// -inf beyond T) and warp w's live-tile bits (bit j: key tile j of BK keys has a key that is not
// padding) -> Lw[w]. Each of the NTH threads reads FA2P_MAXT / NTH keys, all loads in flight
// together; the caller's barrier makes Mrow and Lw visible.
// With PW, also warp w's bits of the key tiles that are not plain -> Pw[w] (a plain tile: all
// its keys before T, every mask value exactly 0; tiles up to FA2P_MAXT / BK).
template <int NTH, int BK, bool PW = false>
__device__ __forceinline__ void mask_row_live(const float* __restrict__ mrow, int T_, float* Mrow, unsigned* Lw,
                                              int tid, int lane, int w, unsigned* Pw = nullptr) {
  constexpr int MPT = FA2P_MAXT / NTH;  // mask entries per thread
  float mv[MPT];
#pragma unroll
  for (int i = 0; i < MPT; ++i) {
    const int k = tid + i * NTH;
    mv[i] = k < T_ ? mrow[k] : 0.0f;
  }
  unsigned bits = 0u, notplain = 0u;
#pragma unroll
  for (int i = 0; i < MPT; ++i) {
    const int k = tid + i * NTH;
    if (k < T_ && mv[i] > PAD_MASK) bits |= 1u << (k / BK);
    if constexpr (PW) {
      if (!(k < T_ && mv[i] == 0.0f)) notplain |= 1u << (k / BK);
    }
    Mrow[k] = k < T_ ? fmaxf(mv[i] * LOG2E_F, -FLT_MAX_F) : NEG_INF;
  }
  bits = __reduce_or_sync(0xffffffffu, bits);
  if (lane == 0) Lw[w] = bits;
  if constexpr (PW) {
    notplain = __reduce_or_sync(0xffffffffu, notplain);
    if (lane == 0) Pw[w] = notplain;
  }
}

// Key tile jt -> buffer bf of KV (K and V, cp.async, zero rows beyond T): LOAD_KV_TILE_U without
// the mask. Expects in scope tid, NTH, base, rs, C, T_, BK, D, KV.
#define LOAD_KV_TILE_P(jt, bf)                                                             \
  do {                                                                                     \
    const int k0_ = (jt) * BK;                                                             \
    constexpr int N_ = BK * (D / 8);                                                       \
    static_assert(N_ % NTH == 0, "whole chunks per thread");                               \
    _Pragma("unroll") for (int it_ = 0; it_ < N_ / NTH; ++it_) {                           \
      const int i = tid + it_ * NTH;                                                       \
      const int r = i >> 3, c = (i & 7) * 8, k = k0_ + r;                                  \
      const bf16_t* src = base + (long)(k < T_ ? k : 0) * rs + C + c;                      \
      cp_async16(&KV[bf][0][r][c], src, k < T_);                                           \
      cp_async16(&KV[bf][1][r][c], src + C, k < T_);                                       \
    }                                                                                      \
  } while (0)

// A32 (fa2w8v4, fa2w8v5): the K/V tile addresses of the loop (ldmatrix, cp.async destinations)
// in the shared window, 32 bits: one base per tile and compile-time offsets (Tile72). B1 (fa2w8v5,
// with A32): one barrier per key tile instead of two. Each iteration waits for its tile, then the
// barrier makes it visible and tells that every warp is done with the previous tile, whose
// buffer the next tile is then loaded into (while this one is computed). Without B1 the next
// tile is requested before the barrier, so a second barrier after the tile keeps it off the
// buffer still being read.
// Key tile jn -> the buffer at shared address dst (K at dst, V at dst + VB, rows of ROWB bytes)
// by cp.async, zero rows beyond T: this thread's chunks of 8 columns (key rows r0 + it NTH / 8,
// columns c..c+7), as LOAD_KV_TILE_P. Expects in scope NTH, BK, ROWB, VB, base, rs, C, c, r0, T_.
// (A macro: as a function, ptxas spills fa2_w8v4 at 128 registers.)
#define LOAD_KV_TILE_A32(jn, dst)                                                          \
  do {                                                                                     \
    static_assert(BK * 8 % NTH == 0 && NTH % 8 == 0, "whole chunks, one column per thread"); \
    _Pragma("unroll") for (int it_ = 0; it_ < BK * 8 / NTH; ++it_) {                        \
      const int k_ = (jn) * BK + r0 + it_ * (NTH / 8);                                     \
      const bf16_t* src_ = base + (long)(k_ < T_ ? k_ : 0) * rs + C + c;                   \
      const unsigned d_ = (dst) + (unsigned)it_ * (NTH / 8) * ROWB;                        \
      cp_async16(d_, src_, k_ < T_);                                                       \
      cp_async16(d_ + VB, src_ + C, k_ < T_);                                              \
    }                                                                                      \
  } while (0)

template <int NW, bool DROP = false, bool A32 = false, bool B1 = false>
__device__ __forceinline__ void attention_fa2p(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                               bf16_t* __restrict__ out, int T_, int H, float scale,
                                               Dropout dr = Dropout{}) {
  constexpr int D = 64, BQ = 16 * NW, BK = 64, DP = D + 8, NTH = 32 * NW;
  constexpr bool ALIAS_Q = NW == 8;     // Q tile over buffer 1 (its K and V: the same 2 BK rows)
  static_assert(!ALIAS_Q || BQ == 2 * BK, "Q tile = buffer 1");
  static_assert(!B1 || A32, "B1 is written for the A32 loop (the other loop requests a tile before its barrier)");
  __shared__ __align__(16) bf16_t KV[2][2][BK][DP];  // [buffer][K, V][key][column]
  __shared__ __align__(16) bf16_t Qown[ALIAS_Q ? 1 : BQ][DP];
  __shared__ float Mrow[FA2P_MAXT];  // mask * log2(e) of every key, -inf beyond T
  __shared__ unsigned Lw[NW];         // live-tile bits per warp
  bf16_t(*Qs)[DP] = ALIAS_Q ? reinterpret_cast<bf16_t(*)[DP]>(&KV[1][0][0][0]) : Qown;
  if (T_ > FA2P_MAXT) __trap();  // the host never launches it so; fail loudly rather than read past Mrow
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int g = lane >> 2, q4 = lane & 3;   // accumulator rows g and g + 8, columns 2 q4 + {0, 1}
  const int lm = lane >> 3, lr = lane & 7;  // ldmatrix: this lane addresses row lr of matrix lm
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int C = H * D;
  const long rs = 3L * C;
  const bf16_t* base = qkv + (long)b * T_ * rs + (long)h * D;
  const float* mrow = mask + (long)b * T_;
  const float sl2 = scale * LOG2E_F;
  const int ntiles = (T_ + BK - 1) / BK;

  // Q tile (zero rows beyond T): group 1; key tile 0 into buffer 0: group 2
#pragma unroll
  for (int it = 0; it < BQ * (D / 8) / NTH; ++it) {
    const int i = tid + it * NTH, r = i >> 3, c8 = (i & 7) * 8, q = q0 + r;
    cp_async16(&Qs[r][c8], base + (long)(q < T_ ? q : 0) * rs + c8, q < T_);
  }
  cp_async_commit();
  LOAD_KV_TILE_P(0, 0);
  cp_async_commit();
  // the mask row, meanwhile: Mrow and the live bits
  mask_row_live<NTH, BK>(mrow, T_, Mrow, Lw, tid, lane, w);
  cp_async_wait1();  // the Q tile (this thread's part)
  __syncthreads();   // ... everyone's, and Mrow, Lw
  unsigned live = 0u;
#pragma unroll
  for (int i = 0; i < NW; ++i) live |= Lw[i];
  unsigned qa[1][4][4];  // A fragments of this warp's 16 query rows, 4 k-steps of 16 over D
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) ldsm_x4(qa[0][ks], &Qs[w * 16 + (lm & 1) * 8 + lr][ks * 16 + (lm >> 1) * 8]);
  // every warp has its Q fragments before tile 1 lands in buffer 1 (with B1 the loop's first
  // barrier, before tile 1 is requested, says so)
  if (ALIAS_Q && !B1) __syncthreads();

  float o[1][8][4];
  float m[1][2] = {{NEG_INF, NEG_INF}}, l[1][2] = {{0.0f, 0.0f}};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) o[0][nt][0] = o[0][nt][1] = o[0][nt][2] = o[0][nt][3] = 0.0f;
  int j = 0, buf = 0;
  if constexpr (A32) {
    // byte offsets in the shared window: buffer bf, K (0) or V (1), key r, column c = kv0 + ...
    constexpr unsigned BUFB = sizeof(KV[0]), VB = sizeof(KV[0][0]), ROWB = sizeof(KV[0][0][0]);
    const unsigned kv0 = (unsigned)__cvta_generic_to_shared(&KV[0][0][0][0]);  // not volatile: ptxas folds it
    // this thread's cp.async chunks: key rows r0 + it NTH / 8, columns c..c+7 (LOAD_KV_TILE_A32)
    const int r0 = tid >> 3, c = (tid & 7) * 8;
    const unsigned dst0 = kv0 + (unsigned)r0 * ROWB + (unsigned)c * 2u;  // chunk 0, buffer 0
    unsigned boff = 0u;                                                   // buffer buf: 0 or BUFB
    while (j < ntiles) {
      const int jn = next_live(j + 1, ntiles, live);
      if (B1) {
        cp_async_wait0();  // tile j (the only group in flight)
        __syncthreads();   // ... everyone's; and every warp is done with tile j - 1 (or with Q)
        if (jn < ntiles) LOAD_KV_TILE_A32(jn, dst0 + (boff ^ BUFB));
        cp_async_commit();  // possibly empty
      } else {
        if (jn < ntiles) LOAD_KV_TILE_A32(jn, dst0 + (boff ^ BUFB));
        cp_async_commit();  // possibly empty: keeps "all but the newest group" = tile j
        cp_async_wait1();  // all but the newest group: tile j
        __syncthreads();
      }
      const Tile72 kt{kv0 + boff}, vt{kv0 + boff + VB};
      fa2_tile<1, BK, true, DROP>(kt, vt, &Mrow[j * BK], qa, o, m, l, sl2, g, q4, lm, lr, q0 + w * 16, j * BK, h, b,
                                  dr);
      if (!B1) __syncthreads();  // tile j consumed before its buffer is refilled
      boff ^= BUFB;
      j = jn;
    }
  }
  while (!A32 && j < ntiles) {
    const int jn = next_live(j + 1, ntiles, live);
    if (jn < ntiles) LOAD_KV_TILE_P(jn, buf ^ 1);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = tile j
    cp_async_wait1();
    __syncthreads();
#if __CUDA_ARCH__ >= 900
    fa2_tile<1, BK, true, DROP>(KV[buf][0], KV[buf][1], &Mrow[j * BK], qa, o, m, l, sl2, g, q4, lm, lr, q0 + w * 16,
                                j * BK, h, b, dr);
#else  // the same tile; written so, ptxas for sm_80 keeps fa2_w8v3 in 128 registers without spills
    const bf16_t(*kt)[DP] = KV[buf][0];
    fa2_tile<1, BK, true, DROP>(kt, kt + BK, Mrow + j * BK, qa, o, m, l, sl2, g, q4, lm, lr, q0 + w * 16, j * BK, h,
                                b, dr);
#endif
    __syncthreads();  // tile j consumed before its buffer is refilled
    buf ^= 1;
    j = jn;
  }
  store_rows<bf16_t, true>(o[0], l[0][0], l[0][1], out, b, T_, C, h * D, q0 + w * 16 + g, q4);
}

// Launch: grid (ceil(T / 64), H, B), block 128, T <= 512 (4 blocks per SM).
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_v3, 128, 4, attention_fa2p, 4)
// Launch: grid (ceil(T / 128), H, B), block 256, T <= 512 (2 blocks per SM).
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_w8v3, 256, 2, attention_fa2p, 8)

// attention_fwd_bf16_d64_fa2_w8v4 ("fa2w8v4"): fa2w8v3 with the key-tile loop's shared-memory
// addresses in 32 bits (attention_fa2p<8, DROP, true>): the same loads of the same bytes in the
// same order, the same arithmetic, 427 instead of 530 loop instructions on sm_90a. Launched as
// fa2w8v3. (The 4-warp twin spills at 128 registers on sm_80 and sm_90a, so there is none.)
template <bool B1, bool DROP>
__device__ __forceinline__ void attention_fa2p_w8a32(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                                     bf16_t* __restrict__ out, int T_, int H, float scale,
                                                     Dropout dr = Dropout{}) {
  attention_fa2p<8, DROP, true, B1>(qkv, mask, out, T_, H, scale, dr);
}
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_w8v4, 256, 2, attention_fa2p_w8a32, false)
// attention_fwd_bf16_d64_fa2_w8v5 ("fa2w8v5"): fa2w8v4 with one barrier per key tile (B1).
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_w8v5, 256, 2, attention_fa2p_w8a32, true)

// ---------------------------------------------------------------------------------------------
// attention_fwd_bf16_d64_fa2_wg ("fa2wg"; Hopper, compiled for sm_90a; T <= 512): fa2v3 with
// S = Q K^T on the warpgroup tensor cores. The block (4 warps, 64 query rows) is one warpgroup;
// per key tile it issues four wgmma.mma_async.m64n64k16 (one per 16 of the 64 head dims) that
// read Q and K from shared memory through matrix descriptors, where fa2v3's warps issue 32
// mma.sync and 16 ldmatrix each. The accumulators come back in mma.sync's layout (warp w: rows
// 16 w + g, + 8; 8 n-tiles of 8 keys, columns 2 q4 + {0, 1}), so the softmax and O += P V
// (mma.sync, V fragments by ldmatrix.trans) are fa2v3's (fa2_softmax_pv).
// Q and K tiles are stored for the descriptors in the no-swizzle K-major layout: 8 x 8 "core
// matrices" of 128 contiguous bytes (8 rows of 8 head dims), core (row group rg, dim group kg)
// at byte (8 rg + kg) 128. Descriptor: start address >> 4 (bits 0-13), the byte distance between
// core matrices adjacent in K (leading dimension byte offset, 128) >> 4 at bit 16, in M / N
// (stride dimension byte offset, 1024) >> 4 at bit 32, swizzle mode 0 (bits 62-63). The k-step
// of 16 dims advances the start by two cores (256 bytes). Threads write the tiles with cp.async
// (the generic proxy) and wgmma reads them through the async proxy: each thread fences
// (fence.proxy.async.shared::cta) before the barrier that precedes the wgmma.
// Elsewhere than sm_90a the entry points exist but trap; the host launches them on sm_90 only.
#define WG_CORE(r, c8) ((((r) >> 3) * 8 + (c8)) * 64 + ((r) & 7) * 8)  // element offset of (row r, dims 8 c8..)
// The 32 accumulators of a 64 x 64 wgmma (float x[8][4], mma.sync's layout) as asm operands %0-%31
#define WG_ACC32(x)                                                                                               \
  "+f"(x[0][0]), "+f"(x[0][1]), "+f"(x[0][2]), "+f"(x[0][3]), "+f"(x[1][0]), "+f"(x[1][1]), "+f"(x[1][2]),         \
      "+f"(x[1][3]), "+f"(x[2][0]), "+f"(x[2][1]), "+f"(x[2][2]), "+f"(x[2][3]), "+f"(x[3][0]), "+f"(x[3][1]),     \
      "+f"(x[3][2]), "+f"(x[3][3]), "+f"(x[4][0]), "+f"(x[4][1]), "+f"(x[4][2]), "+f"(x[4][3]), "+f"(x[5][0]),     \
      "+f"(x[5][1]), "+f"(x[5][2]), "+f"(x[5][3]), "+f"(x[6][0]), "+f"(x[6][1]), "+f"(x[6][2]), "+f"(x[6][3]),     \
      "+f"(x[7][0]), "+f"(x[7][1]), "+f"(x[7][2]), "+f"(x[7][3])

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ unsigned long long wg_desc(const void* p) {
  return (unsigned long long)((smem_u32(p) & 0x3FFFFu) >> 4) | ((unsigned long long)(128 >> 4) << 16) |
         ((unsigned long long)(1024 >> 4) << 32);
}

// The compiler must not move reads or writes of the accumulators across the asynchronous wgmma
// (as CUTLASS's warpgroup_fence_operand).
__device__ __forceinline__ void wg_fence_operand(float (&s)[8][4]) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(s[nt][e])::"memory");
}

// s (64 x 64 over the warpgroup, mma.sync accumulator layout per warp) = Q K^T: four k-steps of
// 16 head dims; the first overwrites s (scale-d 0).
__device__ __forceinline__ void wg_qk(float (&s)[8][4], unsigned long long dq, unsigned long long dk) {
  wg_fence_operand(s);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : WG_ACC32(s)
        : "l"(dq + 16ull * ks), "l"(dk + 16ull * ks), "r"(ks));
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  wg_fence_operand(s);
}

// Descriptor of a V tile (keys x head dims, WG_CORE layout) as the N-major B operand of O += P V
// (imm-trans-b 1): the canonical no-swizzle MN-major layout ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
// has the 8 contiguous elements along N (head dims), SBO between groups of 8 along N (128 bytes
// here) and LBO between groups of 8 along K (keys: 1024 bytes); a k-step of 16 keys advances the
// start by 2048 bytes.
__device__ __forceinline__ unsigned long long wg_desc_v(const void* p) {
  return (unsigned long long)((smem_u32(p) & 0x3FFFFu) >> 4) | ((unsigned long long)(1024 >> 4) << 16) |
         ((unsigned long long)(128 >> 4) << 32);
}

// o (64 x 64 over the warpgroup) += P V: four k-steps of 16 keys, P from registers (pa[kk], the
// mma.sync A fragments of keys 16 kk .. 16 kk + 15: the wgmma A register layout), V from shared
// memory through dv. wg_pv_issue issues and commits the group; wg_pv also waits for it.
__device__ __forceinline__ void wg_pv_issue(float (&o)[8][4], unsigned (&pa)[4][4], unsigned long long dv) {
  wg_fence_operand(o);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)  // P's registers written before the fence, as o's (FA3 fences them too)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(pa[kk][i])::"memory");
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
        : WG_ACC32(o)
        : "r"(pa[kk][0]), "r"(pa[kk][1]), "r"(pa[kk][2]), "r"(pa[kk][3]), "l"(dv + 128ull * kk), "r"(1));
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_pv(float (&o)[8][4], unsigned (&pa)[4][4], unsigned long long dv) {
  wg_pv_issue(o, pa, dv);
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  wg_fence_operand(o);
}

// s (64 x 64 over the warpgroup) = Q K^T with Q from registers (qa[ks]: the mma.sync A fragments
// of head dims 16 ks .. 16 ks + 15, the wgmma A register layout) and K from shared memory through
// dk (K-major, as wg_qk): four k-steps, the first overwriting s; issued and committed, not waited for.
__device__ __forceinline__ void wg_qk_rs_issue(float (&s)[8][4], const unsigned (&qa)[4][4], unsigned long long dk) {
  wg_fence_operand(s);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
        : WG_ACC32(s)
        : "r"(qa[ks][0]), "r"(qa[ks][1]), "r"(qa[ks][2]), "r"(qa[ks][3]), "l"(dk + 16ull * ks), "r"(ks));
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
#endif

template <bool PV, bool DROP = false>
__device__ __forceinline__ void attention_fa2wg(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                                bf16_t* __restrict__ out, int T_, int H, float scale,
                                                Dropout dr = Dropout{}) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = 64, BQ = 64, BK = 64, DP = D + 8, NTH = 128, NW = 4;
  __shared__ __align__(128) bf16_t Qc[BQ * D];      // Q tile, core-matrix layout (WG_CORE)
  __shared__ __align__(128) bf16_t Kc[2][BK * D];   // K tiles, core-matrix layout
  // V tiles: rows for ldmatrix.trans, or (PV) the WG_CORE layout for the wgmma of O += P V
  __shared__ __align__(128) bf16_t Vs[2][PV ? 1 : BK][PV ? BK * D : DP];
  __shared__ float Mrow[FA2P_MAXT];  // mask * log2(e) of every key, -inf beyond T
  __shared__ unsigned Lw[NW];         // live-tile bits per warp
  if (T_ > FA2P_MAXT) __trap();  // the host never launches it so; fail loudly rather than read past Mrow
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int g = lane >> 2, q4 = lane & 3;   // accumulator rows g and g + 8, columns 2 q4 + {0, 1}
  const int lm = lane >> 3, lr = lane & 7;  // ldmatrix: this lane addresses row lr of matrix lm
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int C = H * D;
  const long rs = 3L * C;
  const bf16_t* base = qkv + (long)b * T_ * rs + (long)h * D;
  const float* mrow = mask + (long)b * T_;
  const float sl2 = scale * LOG2E_F;
  const int ntiles = (T_ + BK - 1) / BK;
  // key tile jt: K (core layout) and V (rows) into buffer bf, zero rows beyond T
  auto load_kv = [&](int jt, int bf) {
#pragma unroll
    for (int it = 0; it < BK * (D / 8) / NTH; ++it) {
      const int i = tid + it * NTH, r = i >> 3, c8 = i & 7, k = jt * BK + r;
      const bf16_t* src = base + (long)(k < T_ ? k : 0) * rs + C + c8 * 8;
      cp_async16(&Kc[bf][WG_CORE(r, c8)], src, k < T_);
      cp_async16(PV ? &Vs[bf][0][WG_CORE(r, c8)] : &Vs[bf][PV ? 0 : r][c8 * 8], src + C, k < T_);
    }
  };

  // Q tile and key tile 0: one cp.async group, waited for in the first iteration
#pragma unroll
  for (int it = 0; it < BQ * (D / 8) / NTH; ++it) {
    const int i = tid + it * NTH, r = i >> 3, c8 = i & 7, q = q0 + r;
    cp_async16(&Qc[WG_CORE(r, c8)], base + (long)(q < T_ ? q : 0) * rs + c8 * 8, q < T_);
  }
  load_kv(0, 0);
  cp_async_commit();
  // the mask row meanwhile (as attention_fa2p)
  mask_row_live<NTH, BK>(mrow, T_, Mrow, Lw, tid, lane, w);
  __syncthreads();  // Mrow, Lw
  unsigned live = 0u;
#pragma unroll
  for (int i = 0; i < NW; ++i) live |= Lw[i];
  const unsigned long long dq = wg_desc(Qc);

  float o[1][8][4];
  float m[1][2] = {{NEG_INF, NEG_INF}}, l[1][2] = {{0.0f, 0.0f}};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) o[0][nt][0] = o[0][nt][1] = o[0][nt][2] = o[0][nt][3] = 0.0f;
  int j = 0, buf = 0;
  while (j < ntiles) {
    const int jn = next_live(j + 1, ntiles, live);
    if (jn < ntiles) load_kv(jn, buf ^ 1);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = tile j (and Q)
    cp_async_wait1();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async data -> wgmma
    __syncthreads();
    float s[1][8][4];
    wg_qk(s[0], dq, wg_desc(Kc[buf]));
    if (PV) {
      softmax_tile<8, true>(s[0], &Mrow[j * BK], q4, sl2, m[0][0], m[0][1], l[0][0], l[0][1], o[0]);
      unsigned pa[4][4];  // P as the A fragments of the four k-steps of 16 keys
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        if (DROP) {
          drop4(s[0][2 * kk], dr, q0 + w * 16 + g, j * BK + kk * 16 + 2 * q4, h, b);
          drop4(s[0][2 * kk + 1], dr, q0 + w * 16 + g, j * BK + kk * 16 + 8 + 2 * q4, h, b);
        }
        pa[kk][0] = pack_bf16_cvt(s[0][2 * kk][0], s[0][2 * kk][1]);
        pa[kk][1] = pack_bf16_cvt(s[0][2 * kk][2], s[0][2 * kk][3]);
        pa[kk][2] = pack_bf16_cvt(s[0][2 * kk + 1][0], s[0][2 * kk + 1][1]);
        pa[kk][3] = pack_bf16_cvt(s[0][2 * kk + 1][2], s[0][2 * kk + 1][3]);
      }
      wg_pv(o[0], pa, wg_desc_v(&Vs[buf][0][0]));
    } else {
      fa2_softmax_pv<1, BK, true, DROP>(s, reinterpret_cast<const bf16_t(*)[72]>(&Vs[buf][0][0]), &Mrow[j * BK], o, m,
                                        l, sl2, g, q4, lm, lr, q0 + w * 16, j * BK, h, b, dr);
    }
    __syncthreads();  // tile j consumed (wgmma waited for above) before its buffers are refilled
    buf ^= 1;
    j = jn;
  }
  store_rows<bf16_t, true>(o[0], l[0][0], l[0][1], out, b, T_, C, h * D, q0 + w * 16 + g, q4);
#else
  __trap();  // wgmma: sm_90a only
#endif
}

// Launch: grid (ceil(T / 64), H, B), block 128 (one warpgroup), T <= 512; module compiled for
// sm_90a. attention_fwd_bf16_d64_fa2_wg2 ("fa2wg2"): fa2wg with O += P V on wgmma too (P from
// registers, V N-major from shared memory, wg_pv): every product of the tile on the warpgroup
// tensor cores; launched as fa2wg.
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_wg, 128, 4, attention_fa2wg, false)
FA2_ENTRY_PAIR(attention_fwd_bf16_d64_fa2_wg2, 128, 4, attention_fa2wg, true)

// ---------------------------------------------------------------------------------------------
// attention_fwd_bf16_d64_fa2_wg3 / _wg4 ("fa2wg3", "fa2wg4"; Hopper, compiled for sm_90a;
// T <= 512): both products on wgmma as fa2wg2, restructured after FlashAttention-3 (Shah et al.
// 2024) and FlashAttention-4's softmax where run 7 found fa2wg / fa2wg2 slower than fa2v3. The
// machine code of fa2v3 / fa2w8v3 spends most of a key tile's instructions outside the tensor
// cores (530 per warp and tile for 64 HMMA in fa2w8v3), and so does fa2wg2's (408 for 8 HGMMA);
// everything here takes instructions off that path:
//  - Q stays in registers (read once by ldmatrix: the mma.sync A fragments are the wgmma A
//    register layout) and S = Q K^T reads only K from shared memory; fa2wg reads both operands
//    of each m64n64k16 from shared memory (4 KB per 131k multiply-adds).
//  - The softmax of key tile j overlaps O += P V of tile j - 1 (FA3's intra-warpgroup
//    pipelining): S_j = Q K_j^T and O += P_{j-1} V_{j-1} are issued together, the warpgroup
//    waits for S_j only (wait_group 1) and computes its softmax while the tensor cores run P V.
//    The wait for P V, the rescaling of O and the packing of P_j to bf16 (P_{j-1}'s registers are
//    read by the wgmma in flight) open the next iteration: ptxas moves a wait up the block it is
//    in (over the exponentials, in a first version) but not into the block before.
//  - Row sums on the tensor cores (not in the _dropout kernels): each V tile carries a ninth
//    group of 8 columns, column 64 all ones and the rest zeros, and O += P V runs as m64n72k16,
//    so O's column 64 accumulates sum_j P_ij (of the bf16 P that multiplies V), rescaled with O.
//    That replaces 32 FADD per tile. The _dropout kernels keep the sums of the probabilities
//    before dropout in f32 (the normaliser counts every key, as Dropout says).
//  - A row rescales only when its maximum grows (FA4): a row keeps its reference maximum while
//    the tile's maximum stays within 8 of it (probabilities up to 2^8, exact in f32 and in bf16's
//    relative precision; o and l share the reference, so o / l is unchanged), and a warp skips
//    the 32-36 FMUL of the rescaling when none of its rows moved.
//  - Plain tiles (all keys before T, every mask value exactly 0: unpadded batches) skip the mask:
//    the maximum is taken over the raw scores and each probability is ex2(fma(s, scale log2 e,
//    -max)), where a masked tile takes an FFMA (scale and mask) and an FADD (- max) per element.
//  - cp.async addresses: one 64-bit base per thread, a constant step per chunk and per tile.
//  - fa2wg3: two warpgroups (8 warps, 128 query rows) share each K / V tile; fa2wg4: one (64).
// K and V stream separately, one tile ahead: after the barrier that starts iteration j (tile j's
// K and tile j-1's V landed, every warpgroup done with iteration j - 1) the block requests K of
// the next live tile and V of tile j, into the buffers iteration j does not read (K[bf ^ 1],
// V[bf]; iteration j reads K[bf] and V[bf ^ 1]): one barrier per key tile. The Q tile lies over
// K[1] and V[1]'s first 64 columns (static shared memory under 48 KB) until every warp has its
// fragments, which the first barrier of the loop tells. Tiles in no-swizzle core-matrix layouts:
// K as WG_CORE, V as WG_CORE_V (the ones column's group last, written once); each warp's cp.async
// chunks fill 4 whole core matrices (512 bytes on all 32 banks: no bank conflicts).
// Launch: grid (ceil(T / (64 NWG)), H, B), block 128 NWG.
// V tiles (64 keys x 72 columns): core matrices of 8 keys x 8 columns, 8-key groups adjacent, then
// the 9 column groups; the ones column's group (8) is the tile's last 1 KB.
#define WG_CORE_V(r, c8) (((c8) * 8 + ((r) >> 3)) * 64 + ((r) & 7) * 8)
#define WG_ACC36(x) WG_ACC32(x), "+f"(x[8][0]), "+f"(x[8][1]), "+f"(x[8][2]), "+f"(x[8][3])

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Descriptor of a V tile in the WG_CORE_V layout as the N-major B operand: 8-key groups 128 bytes
// apart (LBO), 8-column groups 1024 bytes apart (SBO); a k-step of 16 keys is 256 bytes (16 in
// the descriptor's units).
__device__ __forceinline__ unsigned long long wg_desc_vt(unsigned a) {
  return (unsigned long long)((a & 0x3FFFFu) >> 4) | ((unsigned long long)(128 >> 4) << 16) |
         ((unsigned long long)(1024 >> 4) << 32);
}
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }

// o += P V with V in the WG_CORE_V layout (dv: wg_desc_vt), P from registers (pa[kk]: keys
// 16 kk ..), four k-steps; N72: m64n72k16 over the 9 column groups (o[8]: columns 64-71, the row
// sums in column 64), else m64n64k16 over the first 8. Issued and committed, not waited for.
// The compiler must not move reads or writes of o's first NT n-tiles, or of pa, across this point
// (wg_fence_operand for the 9 n-tiles of an m64n72 accumulator and the P fragments).
template <int NT>
__device__ __forceinline__ void wg_fence_o_pa(float (&o)[9][4], unsigned (&pa)[4][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(o[nt][e])::"memory");
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(pa[kk][i])::"memory");
}

template <bool N72>
__device__ __forceinline__ void wg_pv_v_issue(float (&o)[9][4], unsigned (&pa)[4][4], unsigned long long dv) {
  wg_fence_o_pa<N72 ? 9 : 8>(o, pa);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if constexpr (N72) {
      asm volatile(
          "wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 "
          "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,"
          "%26,%27,%28,%29,%30,%31,%32,%33,%34,%35}, {%36,%37,%38,%39}, %40, 1, 1, 1, 1;\n"
          : WG_ACC36(o)
          : "r"(pa[kk][0]), "r"(pa[kk][1]), "r"(pa[kk][2]), "r"(pa[kk][3]), "l"(dv + 16ull * kk));
    } else {
      asm volatile(
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
          "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
          "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
          : WG_ACC32(o)
          : "r"(pa[kk][0]), "r"(pa[kk][1]), "r"(pa[kk][2]), "r"(pa[kk][3]), "l"(dv + 16ull * kk));
    }
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
#endif

// The online softmax of one key tile in fa2wg3 / fa2wg4, rows g and g + 8 (see above): the raw
// scores s become probabilities in place, relative to the rows' reference maxima m0, m1, which
// move only when the tile's maximum exceeds them by more than 8 (log2 units); c0, c1: the factors
// o (and the row sums) take, exactly 1 where the reference stayed. PLAIN: no mask (a plain tile;
// sl2 > 0). SUMS: this lane's partial row sums l0, l1 are kept here (the _dropout kernels).
// (The row maxima are softmax_scores' code again: shared through a function, ptxas orders
// fa2wg2_dropout's instructions differently, and the kernels checked on the H100 keep their
// machine code.)
template <bool PLAIN, bool SUMS>
__device__ __forceinline__ void softmax_wgp(float (&s)[8][4], const float* ms, int q4, float sl2, float& m0,
                                            float& m1, float& l0, float& l1, float& c0, float& c1) {
  float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (!PLAIN) {
        const float mk = ms[nt * 8 + q4 * 2 + e];
        s[nt][e] = fmaf(s[nt][e], sl2, mk);
        s[nt][2 + e] = fmaf(s[nt][2 + e], sl2, mk);
      }
      mx0 = fmaxf(mx0, s[nt][e]);
      mx1 = fmaxf(mx1, s[nt][2 + e]);
    }
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  if (PLAIN) {  // the maximum of the scaled scores (rounding is monotonic)
    mx0 *= sl2;
    mx1 *= sl2;
  }
  const float mn0 = mx0 > m0 + 8.0f ? mx0 : m0, mn1 = mx1 > m1 + 8.0f ? mx1 : m1;
  const float mu0 = (mn0 == NEG_INF) ? 0.0f : mn0, mu1 = (mn1 == NEG_INF) ? 0.0f : mn1;
  c0 = mn0 == m0 ? 1.0f : ex2(m0 - mu0);  // 0 when nothing was seen (o, l are 0)
  c1 = mn1 == m1 ? 1.0f : ex2(m1 - mu1);
  float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[nt][e] = PLAIN ? ex2(fmaf(s[nt][e], sl2, -mu0)) : ex2(s[nt][e] - mu0);
      s[nt][2 + e] = PLAIN ? ex2(fmaf(s[nt][2 + e], sl2, -mu1)) : ex2(s[nt][2 + e] - mu1);
      if (SUMS) {
        ls0 += s[nt][e];
        ls1 += s[nt][2 + e];
      }
    }
  }
  if (SUMS) {
    l0 = l0 * c0 + ls0;
    l1 = l1 * c1 + ls1;
  }
  m0 = mn0;
  m1 = mn1;
}

// Rows row0 + r0 + it NTH / 8 (it < N * 8 / NTH) of qkv's columns col + 8 c8 .. col + 8 c8 + 7
// -> this thread's chunks of the tile at shared address dst by cp.async, zero rows at or beyond T.
// base: the (batch, head)'s first element; rsi: qkv's row stride (3 C; T rows of it fit an int);
// off0 = r0 rsi + 8 c8. The tile in the WG_CORE layout (K, Q), or VL in WG_CORE_V (V). With
// r0 = (tid % 8) + 8 (tid / 64) and c8 = (tid / 8) % 8, a warp's 32 chunks are 8 rows of 4
// column groups: 4 whole core matrices, 512 bytes on all 32 banks.
template <int N, bool VL, int NTH>
__device__ __forceinline__ void load_tile_wg(unsigned dst, const bf16_t* base, int rsi, int off0, int row0, int col,
                                             int r0, int c8, int T_) {
  const unsigned d0 = dst + 2u * (unsigned)(VL ? WG_CORE_V(r0, c8) : WG_CORE(r0, c8));
  const int o0 = off0 + row0 * rsi + col;
#pragma unroll
  for (int it = 0; it < N * 8 / NTH; ++it) {
    const bool ok = row0 + r0 + it * (NTH / 8) < T_;
    const int off = o0 + it * (NTH / 8) * rsi;
    // chunk it: rows + it NTH / 8, i.e. it NTH / 64 more 8-row groups (WG_CORE: 8 core matrices
    // each; WG_CORE_V: one)
    cp_async16(d0 + 2u * (unsigned)(it * (NTH / 64) * (VL ? 1 : 8) * 64), base + (ok ? off : 0), ok);
  }
}

// OVL = false (fa2wg3s, an ablation): every wgmma group waited for at once (wait_group 0 after
// O += P V too), so the softmax no longer overlaps P V; everything else as fa2wg3.
// EARLY (fa2wg3e, fa2wg4e): the Q tile in a buffer of its own, the launch's dynamic shared
// memory (BQ x 64 bf16: 16 / 8 KB, beside 37 KB of static), so K and V of key tile 1 are
// requested in the prologue too, in a second group the block does not wait for before tile 0:
// at T <= 128 a block waits for global memory once. Tile 1 is processed whatever its mask (as
// tile 0 is: an all-padding tile adds nothing); the live-tile skipping starts after it.
template <int NWG, bool DROP = false, bool OVL = true, bool EARLY = false>
__device__ __forceinline__ void attention_fa2wgp(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                                 bf16_t* __restrict__ out, int T_, int H, float scale,
                                                 Dropout dr = Dropout{}) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = 64, BQ = 64 * NWG, BK = 64, NTH = 128 * NWG, NW = 4 * NWG;
  constexpr int TK = BK * D, TV = BK * 72, TB = TK + TV;  // elements of a K tile, a V tile, a buffer
  static_assert(BK == 64, "WG_CORE_V: 8 groups of 8 keys");
  constexpr bool ONES = !DROP;                            // row sums by the ones column
  // [K0][V0][K1][V1]: K in WG_CORE, V in WG_CORE_V; the Q tile (BQ rows, WG_CORE) over K1 and V1's
  // columns 0-63 first (V1's ones column, its last 1 KB, stays clear of it), or (EARLY) in the
  // dynamic shared memory (BQ * D elements; the host launches with that many bytes x 2)
  __shared__ __align__(128) bf16_t KVc[2 * TB];
  extern __shared__ __align__(128) unsigned char fa2wgp_dyn[];
  static_assert(BQ * D <= TK + BK * D, "the Q tile fits over K1 and V1's columns 0-63");
  static_assert(NTH % 64 == 0, "whole core matrices per warp and chunk");
  __shared__ float Mrow[FA2P_MAXT];  // mask * log2(e) of every key, -inf beyond T
  __shared__ unsigned Lw[NW], Pw[NW];  // live / not-plain tile bits per warp
  if (T_ > FA2P_MAXT) __trap();  // the host never launches it so; fail loudly rather than read past Mrow
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int g = lane >> 2, q4 = lane & 3;   // accumulator rows g and g + 8, columns 2 q4 + {0, 1}
  const int lm = lane >> 3, lr = lane & 7;  // ldmatrix: this lane addresses row lr of matrix lm
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int C = H * D;
  const int rsi = 3 * C;  // qkv's row stride
  const bf16_t* base = qkv + (long)b * T_ * rsi + (long)h * D;
  const float* mrow = mask + (long)b * T_;
  const float sl2 = scale * LOG2E_F;
  const int ntiles = (T_ + BK - 1) / BK;
  const unsigned kv0 = (unsigned)__cvta_generic_to_shared(KVc);
  // this thread's cp.async chunks (load_tile_wg): rows r0 + it NTH / 8, columns 8 c8 .. 8 c8 + 7
  const int r0 = (tid & 7) | ((tid >> 6) << 3), c8 = (tid >> 3) & 7, off0 = r0 * rsi + c8 * 8;
  // the Q tile (over K1 V1, or EARLY in Qs), K and V of key tile 0 (K0, V0): one group
  const unsigned qb = EARLY ? (unsigned)__cvta_generic_to_shared(fa2wgp_dyn) : kv0 + 2u * TB;
  load_tile_wg<BQ, false, NTH>(qb, base, rsi, off0, q0, 0, r0, c8, T_);
  load_tile_wg<BK, false, NTH>(kv0, base, rsi, off0, 0, C, r0, c8, T_);
  load_tile_wg<BK, true, NTH>(kv0 + 2u * TK, base, rsi, off0, 0, 2 * C, r0, c8, T_);
  cp_async_commit();
  if (EARLY) {  // K and V of key tile 1 (K1, V1): a second group, not waited for before tile 0
    if (ntiles > 1) {
      load_tile_wg<BK, false, NTH>(kv0 + 2u * TB, base, rsi, off0, BK, C, r0, c8, T_);
      load_tile_wg<BK, true, NTH>(kv0 + 2u * (TB + TK), base, rsi, off0, BK, 2 * C, r0, c8, T_);
    }
    cp_async_commit();
  }
  // the ones column of both V buffers (ONES): column group 8, key k: column 64 = 1, 65-71 = 0
  if (ONES && tid < 128) {
    const int bfo = tid >> 6, k = tid & 63;
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(kv0 + 2u * (unsigned)(bfo * TB + TK + WG_CORE_V(k, 8))),
                 "r"(0x3F80u), "r"(0u), "r"(0u), "r"(0u)
                 : "memory");
  }
  mask_row_live<NTH, BK, true>(mrow, T_, Mrow, Lw, tid, lane, w, Pw);  // meanwhile
  if (EARLY)
    cp_async_wait1();  // the first group (K_1, V_1 may be in flight)
  else
    cp_async_wait0();
  __syncthreads();  // Q, K_0, V_0, Mrow, Lw, Pw
  unsigned live = 0u, notplain = 0u;
#pragma unroll
  for (int i = 0; i < NW; ++i) {
    live |= Lw[i];
    notplain |= Pw[i];
  }
  if (!(sl2 > 0.0f)) notplain = ~0u;  // the plain path takes the maximum of the unscaled scores
  unsigned qa[4][4];  // A fragments of this warp's 16 query rows, 4 k-steps of 16 head dims
#pragma unroll
  for (int ks = 0; ks < 4; ++ks)
    ldsm_x4(qa[ks], qb + 2u * (unsigned)WG_CORE(w * 16 + (lm & 1) * 8 + lr, 2 * ks + (lm >> 1)));
  const unsigned long long dk0 = wg_desc(KVc), dv0 = wg_desc_vt(kv0 + 2u * TK);
  constexpr unsigned long long DBUF = TB / 8;  // one buffer on, in the descriptors' units (TB * 2 / 16)

  float o[9][4], s[8][4];
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f, c0 = 1.0f, c1 = 1.0f;
#pragma unroll
  for (int nt = 0; nt < 9; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  unsigned pa[4][4];  // P of the previous tile: the A fragments of its four k-steps of 16 keys
  int j = 0, bf = 0, pos = 0;  // key tile j, the pos-th processed, in buffer bf = pos % 2
  bool pending = false;  // s holds the probabilities of the previous tile, its P V not yet issued
  while (true) {
    if (pending) {
      wg_wait0();  // O += P V of the tile before (the only group in flight)
      wg_fence_o_pa<ONES ? 9 : 8>(o, pa);  // o rescaled, pa rewritten only after that wait
      if (__any_sync(0xffffffffu, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
        for (int nt = 0; nt < (ONES ? 9 : 8); ++nt) {
          o[nt][0] *= c0;
          o[nt][1] *= c0;
          o[nt][2] *= c1;
          o[nt][3] *= c1;
        }
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        pa[kk][0] = pack_bf16_cvt(s[2 * kk][0], s[2 * kk][1]);
        pa[kk][1] = pack_bf16_cvt(s[2 * kk][2], s[2 * kk][3]);
        pa[kk][2] = pack_bf16_cvt(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[kk][3] = pack_bf16_cvt(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      }
    }
    if (EARLY && pos == 0)
      cp_async_wait1();  // nothing new since the prologue's wait: K_1 and V_1 may stay in flight
    else
      cp_async_wait0();  // K_j and the previous tile's V (this thread's chunks)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // generic-proxy writes -> wgmma
    __syncthreads();  // everyone's; every warpgroup done with K[bf ^ 1], V[bf] (and the Q tile)
    if (j >= ntiles) break;
    // EARLY: tile 1 follows tile 0, its K and V requested in the prologue
    const int jn = (EARLY && pos == 0) ? (ntiles > 1 ? 1 : ntiles) : next_live(j + 1, ntiles, live);
    if (jn < ntiles && !(EARLY && pos == 0))
      load_tile_wg<BK, false, NTH>(kv0 + 2u * (unsigned)((bf ^ 1) * TB), base, rsi, off0, jn * BK, C, r0, c8, T_);
    // V of tile j into V[bf] (read by the P V of the next iteration): from the third tile on.
    // V of the first came with the Q tile; the second's goes into V[1] now, a tile early (V[1]
    // has held only the Q tile, read before this barrier; EARLY: it came in the prologue)
    if (pos >= 2 || (pos == 0 && jn < ntiles && !EARLY)) {
      const int vt = pos == 0 ? jn : j, vb = pos == 0 ? 1 : bf;
      load_tile_wg<BK, true, NTH>(kv0 + 2u * (unsigned)(vb * TB + TK), base, rsi, off0, vt * BK, 2 * C, r0, c8, T_);
    }
    cp_async_commit();
    wg_qk_rs_issue(s, qa, dk0 + (unsigned long long)bf * DBUF);  // S_j = Q K_j^T
    if (pending) {
      wg_pv_v_issue<ONES>(o, pa, dv0 + (unsigned long long)(bf ^ 1) * DBUF);  // O += P_{j-1} V_{j-1}
      if (OVL)
        wg_wait1();  // S_j; P V still running
      else
        wg_wait0();
    } else {
      wg_wait0();
    }
    wg_fence_operand(s);
    if ((notplain >> j) & 1u)
      softmax_wgp<false, !ONES>(s, &Mrow[j * BK], q4, sl2, m0, m1, l0, l1, c0, c1);
    else
      softmax_wgp<true, !ONES>(s, &Mrow[j * BK], q4, sl2, m0, m1, l0, l1, c0, c1);
    if (DROP) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) drop4(s[nt], dr, q0 + w * 16 + g, j * BK + nt * 8 + 2 * q4, h, b);
    }
    pending = true;
    bf ^= 1;
    ++pos;
    j = jn;
  }
  // the last tile's O += P V (its V in V[bf ^ 1]; the loop's last barrier made it visible)
  wg_pv_v_issue<ONES>(o, pa, dv0 + (unsigned long long)(bf ^ 1) * DBUF);
  wg_wait0();
  wg_fence_o_pa<ONES ? 9 : 8>(o, pa);
  if (ONES) {  // the row sums: column 64, held by the quad's lane q4 = 0 (l0, l1 summed over the quad below)
    l0 = q4 == 0 ? o[8][0] : 0.0f;
    l1 = q4 == 0 ? o[8][2] : 0.0f;
  }
  store_rows<bf16_t, true>(reinterpret_cast<const float(&)[8][4]>(o), l0, l1, out, b, T_, C, h * D,
                           q0 + w * 16 + g, q4);
#else
  __trap();  // wgmma: sm_90a only
#endif
}
// fa2wg3: 2 blocks per SM (16 warps; 1 with dropout); fa2wg4: 4 (16 warps; 2 with dropout)
FA2_ENTRY_PAIR2(attention_fwd_bf16_d64_fa2_wg3, 256, 2, 1, attention_fa2wgp, 2)
FA2_ENTRY_PAIR2(attention_fwd_bf16_d64_fa2_wg4, 128, 4, 2, attention_fa2wgp, 1)
template <int NWG, bool DROP>
__device__ __forceinline__ void attention_fa2wgp_sync(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                                      bf16_t* __restrict__ out, int T_, int H, float scale,
                                                      Dropout dr = Dropout{}) {
  attention_fa2wgp<NWG, DROP, false>(qkv, mask, out, T_, H, scale, dr);
}
// fa2wg3s: fa2wg3 without the overlap of the softmax and P V (launched as fa2wg3)
FA2_ENTRY_PAIR2(attention_fwd_bf16_d64_fa2_wg3s, 256, 2, 1, attention_fa2wgp_sync, 2)
template <int NWG, bool DROP>
__device__ __forceinline__ void attention_fa2wgp_early(const bf16_t* __restrict__ qkv, const float* __restrict__ mask,
                                                       bf16_t* __restrict__ out, int T_, int H, float scale,
                                                       Dropout dr = Dropout{}) {
  attention_fa2wgp<NWG, DROP, true, true>(qkv, mask, out, T_, H, scale, dr);
}
// fa2wg3e / fa2wg4e: fa2wg3 / fa2wg4 with K and V of key tile 1 requested in the prologue
// (launched as fa2wg3 / fa2wg4, with 64 NWG x 128 bytes of dynamic shared memory: the Q tile)
FA2_ENTRY_PAIR2(attention_fwd_bf16_d64_fa2_wg3e, 256, 2, 1, attention_fa2wgp_early, 2)
FA2_ENTRY_PAIR2(attention_fwd_bf16_d64_fa2_wg4e, 128, 4, 2, attention_fa2wgp_early, 1)

// ---------------------------------------------------------------------------------------------
// attention_fwd_f32_d64_tf32x3: f32 attention (D = 64) on tensor cores with the 3xTF32 split
// (as CUTLASS's OpMultiplyAddFastF32, which PyTorch's memory-efficient SDPA uses for f32): every
// f32 operand x = hi + lo with hi = tf32(x), lo = tf32(x - hi), and a b ~= hi_a hi_b + hi_a lo_b +
// lo_a hi_b with mma.sync.m16n8k8 (tf32 in, f32 accumulate): about 2^-21 relative error per
// product instead of TF32's 2^-11. Same layout, mask convention, online softmax in base 2,
// padding-tile skipping and cp.async double buffering as attention_fa2; the probabilities stay
// f32 (split like the other operands).
// The tf32 A fragment wants columns q4 and q4 + 4 of each 8-key step where the S accumulator
// holds columns 2 q4 and 2 q4 + 1, so the keys of a step are taken in the order
// (0, 2, 4, 6, 1, 3, 5, 7): a0/a1 = keys 2 q4, a2/a3 = keys 2 q4 + 1, and the V fragment reads
// rows 2 q4 and 2 q4 + 1 to match (a sum over keys does not depend on their order).
// Block: 4 warps x 16 query rows = 64 rows of one (batch, head); key tiles of 32; shared memory
// rows of 68 floats (conflict-free fragment reads). Queries are read into registers once.
// Launch: grid (ceil(T / 64), H, B), block 128; qkv rows 16-byte aligned.

__device__ __forceinline__ unsigned tf32_of(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}
// x -> (hi, lo), both tf32 bit patterns, x ~= hi + lo
__device__ __forceinline__ void split_tf32(float x, unsigned& hi, unsigned& lo) {
  hi = tf32_of(x);
  lo = tf32_of(x - __uint_as_float(hi));
}
__device__ __forceinline__ void mma_tf32_1688(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// c += a b with the 3xTF32 split (small terms first)
__device__ __forceinline__ void mma_3xtf32(float* c, const unsigned* ahi, const unsigned* alo, unsigned bh0,
                                           unsigned bh1, unsigned bl0, unsigned bl1) {
  mma_tf32_1688(c, alo, bh0, bh1);
  mma_tf32_1688(c, ahi, bl0, bl1);
  mma_tf32_1688(c, ahi, bh0, bh1);
}

template <bool DROP>
__device__ __forceinline__ void attention_tf32x3(const float* __restrict__ qkv, const float* __restrict__ mask,
                                                 float* __restrict__ out, int T_, int H, float scale, Dropout dr) {
  constexpr int D = 64, BQ = 64, BK = 32, DP = D + 4, NTH = 128;
  __shared__ __align__(16) float Ks[2][BK][DP];
  __shared__ __align__(16) float Vs[2][BK][DP];
  __shared__ float Ms[2][BK];
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int g = lane >> 2, q4 = lane & 3;
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int C = H * D;
  const long rs = 3L * C;
  const float* base = qkv + (long)b * T_ * rs + (long)h * D;
  const float* mrow = mask + (long)b * T_;
  const float sl2 = scale * LOG2E_F;
  const int ntiles = (T_ + BK - 1) / BK;

  const unsigned live = live_tiles(mrow, T_, BK, ntiles);
  int j = next_live(0, ntiles, live);
  int buf = 0;
  if (j < ntiles) LOAD_KV_TILE(float, 4, j, 0);
  cp_async_commit();

  // this warp's 16 query rows as split A fragments: 8 k-steps of 8 over D (zeros beyond T)
  unsigned qh[8][4], ql[8][4];
  {
    const int r0 = q0 + w * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int ks = 0; ks < 8; ++ks) {
      const int c = ks * 8 + q4;
      const float x0 = r0 < T_ ? base[(long)r0 * rs + c] : 0.0f;
      const float x1 = r1 < T_ ? base[(long)r1 * rs + c] : 0.0f;
      const float x2 = r0 < T_ ? base[(long)r0 * rs + c + 4] : 0.0f;
      const float x3 = r1 < T_ ? base[(long)r1 * rs + c + 4] : 0.0f;
      split_tf32(x0, qh[ks][0], ql[ks][0]);
      split_tf32(x1, qh[ks][1], ql[ks][1]);
      split_tf32(x2, qh[ks][2], ql[ks][2]);
      split_tf32(x3, qh[ks][3], ql[ks][3]);
    }
  }
  float o[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;

  while (j < ntiles) {
    const int jn = next_live(j + 1, ntiles, live);
    if (jn < ntiles) LOAD_KV_TILE(float, 4, jn, buf ^ 1);
    cp_async_commit();
    cp_async_wait1();
    __syncthreads();
    // S = Q K^T: 4 n-tiles of 8 keys, 8 k-steps of 8 over D
    float s[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) {
        unsigned bh0, bl0, bh1, bl1;  // B = K^T: (k = d, n = key): b0 (d = q4, key g), b1 (d = q4 + 4)
        split_tf32(Ks[buf][nt * 8 + g][ks * 8 + q4], bh0, bl0);
        split_tf32(Ks[buf][nt * 8 + g][ks * 8 + q4 + 4], bh1, bl1);
        mma_3xtf32(s[nt], qh[ks], ql[ks], bh0, bh1, bl0, bl1);
      }
    }
    softmax_tile<4, false>(s, Ms[buf], q4, sl2, m0, m1, l0, l1, o);
    if (DROP) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) drop4(s[nt], dr, q0 + w * 16 + g, j * BK + nt * 8 + 2 * q4, h, b);
    }
    // O += P V: one k-step per n-tile of S (8 keys, in the order 2 q4 | 2 q4 + 1), 8 n-tiles of D
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      unsigned ph[4], pl[4];
      split_tf32(s[kk][0], ph[0], pl[0]);  // (g, key 2 q4)
      split_tf32(s[kk][2], ph[1], pl[1]);  // (g + 8, key 2 q4)
      split_tf32(s[kk][1], ph[2], pl[2]);  // (g, key 2 q4 + 1)
      split_tf32(s[kk][3], ph[3], pl[3]);  // (g + 8, key 2 q4 + 1)
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        unsigned bh0, bl0, bh1, bl1;  // B = V: b0 (key 2 q4, column g), b1 (key 2 q4 + 1)
        split_tf32(Vs[buf][kk * 8 + 2 * q4][nt * 8 + g], bh0, bl0);
        split_tf32(Vs[buf][kk * 8 + 2 * q4 + 1][nt * 8 + g], bh1, bl1);
        mma_3xtf32(o[nt], ph, pl, bh0, bh1, bl0, bl1);
      }
    }
    __syncthreads();
    buf ^= 1;
    j = jn;
  }
  store_rows(o, l0, l1, out, b, T_, C, h * D, q0 + w * 16 + g, q4);
}

extern "C" __global__ void __launch_bounds__(128) attention_fwd_f32_d64_tf32x3(const float* qkv, const float* mask,
                                                                               float* out, int T_, int H, float scale) {
  attention_tf32x3<false>(qkv, mask, out, T_, H, scale, Dropout{});
}

// attention_fwd_f32_d64_tf32x3 with dropout on the probabilities (see Dropout): launch as it.
extern "C" __global__ void __launch_bounds__(128) attention_fwd_f32_d64_tf32x3_dropout(
    const float* qkv, const float* mask, float* out, int T_, int H, float scale, unsigned long long seed, unsigned thr,
    float keep_scale) {
  attention_tf32x3<true>(qkv, mask, out, T_, H, scale,
                         Dropout{(unsigned)seed, (unsigned)(seed >> 32), thr, keep_scale});
}
