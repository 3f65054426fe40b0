//! The counter-based dropout draw of the fused attention kernels (`kernels-cu/attention.cu`,
//! `struct Dropout`), for the CPU op and the references the kernels are checked against.
//!
//! Element (batch row b, head h, query i, key j) of the attention probabilities is kept iff word
//! `2 * bit3(i) + bit0(j)` of Philox4x32-10 (Salmon, Moraes, Dror and Shaw 2011, as in Random123)
//! with key (seed low 32 bits, seed high 32 bits) and counter (j >> 1, i & !8, h, b) is at least
//! `threshold(p)`; a kept probability is scaled by 1 / (1 - p). The draw depends on (seed, b, h,
//! i, j) alone, so every kernel, tile shape and thread count gives the same mask.

/// Philox4x32 with 10 rounds: counter `c`, key `k` -> 4 words.
pub fn philox4x32_10(mut c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (mut k0, mut k1) = (k[0], k[1]);
    for _ in 0..10 {
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0];
        k0 = k0.wrapping_add(0x9E37_79B9);
        k1 = k1.wrapping_add(0xBB67_AE85);
    }
    c
}

/// The keep threshold for drop probability `p` in [0, 1): round(p 2^32), so that a uniform 32-bit
/// word is below it with probability p (to within 2^-33).
pub fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

/// Whether element (b, h, i, j) is kept, for `seed` and threshold `thr`.
pub fn keep(seed: u64, thr: u32, b: usize, h: usize, i: usize, j: usize) -> bool {
    let w = philox4x32_10(
        [(j >> 1) as u32, (i & !8) as u32, h as u32, b as u32],
        [seed as u32, (seed >> 32) as u32],
    );
    w[((i >> 3) & 1) * 2 + (j & 1)] >= thr
}

/// The dropout multiplier of one (b, h) block: (T, T) row-major, 0 or 1 / (1 - p). One Philox
/// call covers rows (i, i + 8) (i with bit 3 clear) and keys (2m, 2m + 1), as in the kernels.
pub fn block_multiplier(seed: u64, p: f64, b: usize, h: usize, t: usize) -> Vec<f32> {
    let (thr, scale) = (threshold(p), (1.0 / (1.0 - p)) as f32);
    let key = [seed as u32, (seed >> 32) as u32];
    let mut m = vec![0f32; t * t];
    for i in (0..t).filter(|i| i & 8 == 0) {
        for j in (0..t).step_by(2) {
            let w = philox4x32_10([(j >> 1) as u32, i as u32, h as u32, b as u32], key);
            for (e, word) in w.into_iter().enumerate() {
                let (r, k) = (i + 8 * (e >> 1), j + (e & 1));
                if r < t && k < t && word >= thr {
                    m[r * t + k] = scale;
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors).
    #[test]
    fn philox_matches_the_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn keep_rate_is_one_minus_p_and_depends_on_every_coordinate() {
        let (seed, p) = (0x1234_5678_9abc_def0u64, 0.1);
        let thr = threshold(p);
        let n = 256;
        let kept = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|&(i, j)| keep(seed, thr, 3, 5, i, j))
            .count() as f64;
        let rate = kept / (n * n) as f64;
        // 65536 draws: the standard deviation of the rate is 0.0012
        assert!((rate - 0.9).abs() < 0.006, "keep rate {rate}");
        // the block builder (one Philox call per 4 elements) is `keep` element by element, also
        // for T not a multiple of 16
        for t in [64, 37] {
            let m = block_multiplier(seed, p, 3, 5, t);
            for i in 0..t {
                for j in 0..t {
                    let want = if keep(seed, thr, 3, 5, i, j) {
                        1.0 / 0.9
                    } else {
                        0.0
                    };
                    assert!((m[i * t + j] - want).abs() < 1e-6, "t {t} ({i}, {j})");
                }
            }
        }
        // changing any coordinate or the seed changes the mask
        let m = block_multiplier(seed, p, 3, 5, 64);
        for other in [
            block_multiplier(seed ^ 1, p, 3, 5, 64),
            block_multiplier(seed << 1, p, 3, 5, 64),
            block_multiplier(seed, p, 4, 5, 64),
            block_multiplier(seed, p, 3, 6, 64),
        ] {
            assert_ne!(m, other);
        }
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let zero_p = block_multiplier(seed, 0.0, 0, 0, 40);
        assert!(zero_p.iter().all(|&v| v == 1.0));
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(0.5), 1 << 31);
    }
}
