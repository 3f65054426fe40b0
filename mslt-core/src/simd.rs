//! Vectorisable f32 kernels for the CPU hot loops: `exp` and the softmax / log-sum-exp row passes
//! built on it. The default x86-64 target compiles for SSE2 only and calls the C library's scalar
//! `expf`; here each row pass has an AVX2 + FMA version chosen at run time
//! (`is_x86_feature_detected!`) with the same arithmetic, so every machine gets the same bits.
//!
//! [`exp`] is the Cephes `expf` scheme: `x = n ln 2 + r`, `|r| <= ln 2 / 2`, a degree-6
//! polynomial for `e^r`, `2^n` by exponent bits; within 2 ulp of `f64::exp` on [-87, 88]
//! (`tests`), 0 below -87.3 (so masked logits of -1e9 give exactly 0), +inf above 88 (f32's
//! `exp` overflows at 88.72; the callers only pass arguments <= 0).

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_55, 88.0);
    // n = round(x log2 e), by the 1.5 * 2^23 trick (round to nearest even)
    let n = xc.mul_add(LOG2E, 12_582_912.0) - 12_582_912.0;
    let r = n.mul_add(-LN2_HI, xc);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let y = e * scale;
    if x < -87.336_55 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// erf, branch-free: a Taylor series below |x| = 0.5, Abramowitz & Stegun 7.1.26 above (the
/// approximation PyTorch's vectorised CPU GELU uses); within 2.4e-7 of the C library's double
/// `erf` on [-8, 8] (`fused::tests`).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let s = 1.0 + z * (-1.0 / 3.0 + z * (0.1 + z * (-1.0 / 42.0 + z * (1.0 / 216.0 - z / 1320.0))));
    let taylor = std::f32::consts::FRAC_2_SQRT_PI * x * s;
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let big = (1.0 - poly * exp(-a * a)).copysign(x);
    if a < 0.5 {
        taylor
    } else {
        big
    }
}

#[inline(always)]
fn gelu_generic(out: &mut [f32], x: &[f32]) {
    for (v, &a) in out.iter_mut().zip(x) {
        *v = 0.5 * a * (1.0 + erf(a * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// d/dx [x Phi(x)] = Phi(x) + x phi(x), times the incoming gradient.
#[inline(always)]
fn gelu_bwd_generic(out: &mut [f32], x: &[f32], g: &[f32]) {
    let inv_sqrt_2pi = 0.398_942_3_f32;
    for ((v, &a), &gi) in out.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + erf(a * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = inv_sqrt_2pi * exp(-0.5 * a * a);
        *v = gi * (cdf + a * pdf);
    }
}

/// The sum of 8 lane accumulators, in a fixed order.
#[inline(always)]
fn fold8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Sum of a slice in 8 independent lanes (vectorises; a fixed order, so a fixed result).
#[inline(always)]
fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s = fold8(acc);
    for x in it.remainder() {
        s += x;
    }
    s
}

#[inline(always)]
fn max8(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in it.remainder() {
        m = m.max(x);
    }
    m
}

#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    let m = max8(row);
    for x in row.iter_mut() {
        *x = exp(*x - m);
    }
    let inv = 1.0 / sum8(row);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[inline(always)]
fn lse_generic(row: &[f32]) -> f32 {
    let m = max8(row);
    let mut acc = [0f32; 8];
    let mut it = row.chunks_exact(8);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += exp(x - m);
        }
    }
    let mut s = fold8(acc);
    for &x in it.remainder() {
        s += exp(x - m);
    }
    m + s.ln()
}

/// `out_j = g * exp(x_j - l)` (a cross-entropy gradient row before the label's `- g`).
#[inline(always)]
fn scaled_exp_generic(out: &mut [f32], x: &[f32], l: f32, g: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = g * exp(v - l);
    }
}

/// Mean and 1 / sqrt(var + eps) of a row (biased variance, two passes, 8-lane sums).
#[inline(always)]
fn ln_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let c = x.len() as f32;
    let mean = sum8(x) / c;
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for ch in &mut it {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += (v - mean) * (v - mean);
        }
    }
    let mut var = fold8(acc);
    for &v in it.remainder() {
        var += (v - mean) * (v - mean);
    }
    (mean, 1.0 / (var / c + eps).sqrt())
}

#[inline(always)]
fn ln_fwd_generic(o: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let (mean, rstd) = ln_stats(x, eps);
    for (((o, &v), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * rstd * w + b;
    }
}

/// One row of the LayerNorm backward: `dx = rstd (gy - mean(gy) - xhat mean(gy xhat))` with
/// `gy = g w`, and the row's `g xhat` / `g` added to the dgamma / dbeta accumulators.
#[inline(always)]
fn ln_bwd_generic(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    eps: f32,
) {
    let c = x.len();
    let (mean, rstd) = ln_stats(x, eps);
    // dx holds xhat for now
    for (h, &v) in dx.iter_mut().zip(x) {
        *h = (v - mean) * rstd;
    }
    let (mut a1, mut a2) = ([0f32; 8], [0f32; 8]);
    let mut k = 0;
    while k + 8 <= c {
        for l in 0..8 {
            let gy = g[k + l] * w[k + l];
            a1[l] += gy;
            a2[l] += gy * dx[k + l];
        }
        k += 8;
    }
    let (mut s1, mut s2) = (fold8(a1), fold8(a2));
    while k < c {
        let gy = g[k] * w[k];
        s1 += gy;
        s2 += gy * dx[k];
        k += 1;
    }
    let (m1, m2) = (s1 / c as f32, s2 / c as f32);
    for ((((h, &gk), &wk), dwk), dbk) in dx
        .iter_mut()
        .zip(g)
        .zip(w)
        .zip(dw.iter_mut())
        .zip(db.iter_mut())
    {
        let xh = *h;
        *dwk += gk * xh;
        *dbk += gk;
        *h = rstd * (gk * wk - m1 - xh * m2);
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $avx:ident, $generic:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $generic($($arg),*)
        }

        $(#[$doc])*
        #[inline]
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { $avx($($arg),*) };
            }
            $generic($($arg),*)
        }
    };
}

dispatch!(
    /// Softmax of a row in place.
    softmax_row, softmax_avx2, softmax_generic, (row: &mut [f32]) -> ()
);
dispatch!(
    /// log(sum(exp(row))), shifted by the row max.
    lse_row, lse_avx2, lse_generic, (row: &[f32]) -> f32
);
dispatch!(
    /// `out_j = g * exp(x_j - l)`.
    scaled_exp_row, scaled_exp_avx2, scaled_exp_generic, (out: &mut [f32], x: &[f32], l: f32, g: f32) -> ()
);

dispatch!(
    /// GELU (erf form) of `x` into `out`.
    gelu, gelu_avx2, gelu_generic, (out: &mut [f32], x: &[f32]) -> ()
);
dispatch!(
    /// GELU backward: `out = g * (Phi(x) + x phi(x))`.
    gelu_bwd, gelu_bwd_avx2, gelu_bwd_generic, (out: &mut [f32], x: &[f32], g: &[f32]) -> ()
);

dispatch!(
    /// One LayerNorm row: `o = (x - mean) rstd w + b`.
    layer_norm_row, ln_fwd_avx2, ln_fwd_generic, (o: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) -> ()
);
dispatch!(
    /// One LayerNorm backward row (see `ln_bwd_generic`).
    layer_norm_bwd_row, ln_bwd_avx2, ln_bwd_generic,
    (dx: &mut [f32], x: &[f32], g: &[f32], w: &[f32], dw: &mut [f32], db: &mut [f32], eps: f32) -> ()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_f64_exp() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let e = exp(x) as f64;
            let r = (x as f64).exp();
            let ulp = (r as f32).abs() as f64 * f32::EPSILON as f64;
            worst = worst.max((e - r).abs() / ulp.max(f64::MIN_POSITIVE));
        }
        assert!(worst <= 2.0, "max error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(1e9), f32::INFINITY);
    }

    #[test]
    fn layer_norm_rows_match_f64_and_dispatch_agrees() {
        let c = 37;
        let x: Vec<f32> = (0..c)
            .map(|i| ((i * 7919) % 101) as f32 * 0.07 - 2.0)
            .collect();
        let w: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..c).map(|i| i as f32 * -0.02).collect();
        let g: Vec<f32> = (0..c).map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8).collect();
        let (mut o1, mut o2) = (vec![0f32; c], vec![0f32; c]);
        layer_norm_row(&mut o1, &x, &w, &b, 1e-12);
        ln_fwd_generic(&mut o2, &x, &w, &b, 1e-12);
        assert_eq!(o1, o2);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let xh: Vec<f64> = x.iter().map(|&v| (v as f64 - mean) / var.sqrt()).collect();
        for k in 0..c {
            assert!((o1[k] as f64 - (xh[k] * w[k] as f64 + b[k] as f64)).abs() < 1e-5);
        }
        // backward against the closed form in f64
        let (mut dx, mut dw, mut db) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
        layer_norm_bwd_row(&mut dx, &x, &g, &w, &mut dw, &mut db, 1e-12);
        let gy: Vec<f64> = (0..c).map(|k| g[k] as f64 * w[k] as f64).collect();
        let m1 = gy.iter().sum::<f64>() / c as f64;
        let m2 = (0..c).map(|k| gy[k] * xh[k]).sum::<f64>() / c as f64;
        for k in 0..c {
            let want = (gy[k] - m1 - xh[k] * m2) / var.sqrt();
            assert!(
                (dx[k] as f64 - want).abs() < 1e-4,
                "dx[{k}] {} vs {want}",
                dx[k]
            );
            assert!((dw[k] as f64 - g[k] as f64 * xh[k]).abs() < 1e-5);
            assert_eq!(db[k], g[k]);
        }
    }

    #[test]
    fn row_passes_match_the_plain_formulas_and_dispatch_agrees() {
        let row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.13 - 6.0)
            .collect();
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        let lse = m + s.ln();
        assert!((lse_row(&row) as f64 - lse).abs() < 1e-5);
        assert_eq!(lse_row(&row).to_bits(), lse_generic(&row).to_bits());
        let mut a = row.clone();
        softmax_row(&mut a);
        let mut b = row.clone();
        softmax_generic(&mut b);
        assert_eq!(a, b, "the AVX2 and generic versions give the same bits");
        for (p, &x) in a.iter().zip(&row) {
            assert!((*p as f64 - (x as f64 - lse).exp()).abs() < 1e-7);
        }
        let mut o = vec![0f32; row.len()];
        scaled_exp_row(&mut o, &row, lse as f32, 2.0);
        for (v, p) in o.iter().zip(&a) {
            assert!((v - 2.0 * p).abs() < 1e-6);
        }
        // a masked entry gets exactly zero weight
        let mut r = vec![0.5f32, -1e9, 0.25];
        softmax_row(&mut r);
        assert_eq!(r[1], 0.0);
    }
}
