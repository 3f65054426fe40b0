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
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
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
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
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
