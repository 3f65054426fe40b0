// Fused AdamW update (decoupled weight decay, torch.optim.AdamW semantics) of one f32 parameter
// tensor, for the trainable side of a GPU step: one launch instead of about fifteen Candle ops.
//
//   p' = p * decay                        (decay = 1 - lr * weight_decay; decay_on = 0: p' = p)
//   m' = m + (g - m) * (1 - beta1)        (torch: exp_avg.lerp_(grad, 1 - beta1))
//   v' = v * beta2 + g * g * (1 - beta2)
//   out_p = p' - m' / (sqrt(v') * inv_bc2_sqrt + eps) * step_size     (step_size = lr / bc1)
//
// Shapes: p, g (n); mv (2n: m then v); out (3n: out_p, m', v'), all contiguous f32.
// Every operation is rounded on its own (__fmul_rn, __fadd_rn, ... : no fused multiply-add), in
// the order of mslt-core's CPU update (`mslt_kernels::cpu::adamw_elem`), so both give the same
// bits. Grid-stride loop; every element of out is written. Self-contained: no headers.

extern "C" __global__ void adamw_step_f32(const float* __restrict__ p, const float* __restrict__ g,
                                          const float* __restrict__ mv, float* __restrict__ out,
                                          unsigned long long n, int decay_on, float decay,
                                          float one_minus_beta1, float beta2,
                                          float one_minus_beta2, float inv_bc2_sqrt, float eps,
                                          float step_size) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float gi = g[i], m = mv[i], v = mv[n + i];
    const float pj = decay_on ? __fmul_rn(p[i], decay) : p[i];
    const float mj = __fadd_rn(m, __fmul_rn(__fsub_rn(gi, m), one_minus_beta1));
    const float vj = __fadd_rn(__fmul_rn(v, beta2), __fmul_rn(__fmul_rn(gi, gi), one_minus_beta2));
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vj), inv_bc2_sqrt), eps);
    out[i] = __fsub_rn(pj, __fmul_rn(__fdiv_rn(mj, denom), step_size));
    out[n + i] = mj;
    out[2 * n + i] = vj;
  }
}
