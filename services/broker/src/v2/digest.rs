//! MD5 body digests of a batch of delivered messages, eight at a time where the CPU has AVX2.
//!
//! Every message a v2 consumer receives carries the MD5 of its body (the proxy's digest, which the SDKs verify),
//! and MD5 is serial within one message: hashing 1 KiB costs about 2.6 µs with the portable `md-5` code, the
//! largest single per-message cost of a receive. A receive delivers up to 32 messages at once, so their digests
//! are computed side by side, one message per 32-bit lane of a 256-bit register ("multi-buffer" hashing): eight
//! messages for little more than the price of one. Without AVX2 (or for a single message) the `md-5` crate hashes
//! one message at a time; both give the same bytes (the tests compare them on random inputs).

use md5::{Digest as _, Md5};

/// The MD5 of each body, in order.
pub fn md5_each(bodies: &[&[u8]]) -> Vec<[u8; 16]> {
    #[cfg(target_arch = "x86_64")]
    if bodies.len() > 1 && std::arch::is_x86_feature_detected!("avx2") {
        let mut out = Vec::with_capacity(bodies.len());
        for group in bodies.chunks(8) {
            let mut lanes: [&[u8]; 8] = [&[]; 8];
            lanes[..group.len()].copy_from_slice(group);
            // SAFETY: AVX2 is available (checked above), the only requirement of `x86::md5x8`.
            let sums = unsafe { x86::md5x8(&lanes) };
            out.extend_from_slice(&sums[..group.len()]);
        }
        return out;
    }
    bodies.iter().map(|b| Md5::digest(b).into()).collect()
}

/// The MD5 of each message's body ([`md5_each`]).
pub fn md5_bodies<'a>(messages: impl IntoIterator<Item = &'a comet_store::StoredMessage>) -> Vec<[u8; 16]> {
    let bodies: Vec<bytes::Bytes> = messages.into_iter().map(comet_store::StoredMessage::body).collect();
    md5_each(&bodies.iter().map(|b| &b[..]).collect::<Vec<_>>())
}

/// Upper-case hex of a digest (the proxy's format, which the SDKs compare as a string).
pub fn upper_hex(sum: &[u8; 16]) -> String {
    upper_hex_ascii(sum).iter().map(|&b| char::from(b)).collect()
}

/// [`upper_hex`] as ASCII bytes, for encoders that write it without an allocation.
pub fn upper_hex_ascii(sum: &[u8; 16]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut hex = [0u8; 32];
    for (i, b) in sum.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 0xF)];
    }
    hex
}

/// One lane's message as MD5 consumes it: its whole 64-byte blocks in place, then one or two padded tail blocks.
struct Padded<'a> {
    data: &'a [u8],
    /// Blocks read straight from `data`.
    whole: usize,
    /// The rest of `data`, 0x80, zeros and the bit length: one or two blocks.
    tail: [u8; 128],
    /// Blocks in all.
    blocks: usize,
}

impl<'a> Padded<'a> {
    fn new(data: &'a [u8]) -> Self {
        let whole = data.len() / 64;
        let rest = &data[whole * 64..];
        let tail_blocks = if rest.len() < 56 { 1 } else { 2 };
        let mut tail = [0u8; 128];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        let bits = (data.len() as u64).wrapping_mul(8);
        tail[tail_blocks * 64 - 8..tail_blocks * 64].copy_from_slice(&bits.to_le_bytes());
        Self { data, whole, tail, blocks: whole + tail_blocks }
    }

    /// Block `t` (zeros past the end: an inactive lane's input, whose result is discarded).
    fn block(&self, t: usize) -> &[u8] {
        const ZEROS: [u8; 64] = [0; 64];
        if t < self.whole {
            &self.data[t * 64..t * 64 + 64]
        } else if t < self.blocks {
            let i = t - self.whole;
            &self.tail[i * 64..i * 64 + 64]
        } else {
            &ZEROS
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Padded;

    /// The per-step additive constants of RFC 1321.
    const K: [u32; 64] = [
        0xd76a_a478,
        0xe8c7_b756,
        0x2420_70db,
        0xc1bd_ceee,
        0xf57c_0faf,
        0x4787_c62a,
        0xa830_4613,
        0xfd46_9501,
        0x6980_98d8,
        0x8b44_f7af,
        0xffff_5bb1,
        0x895c_d7be,
        0x6b90_1122,
        0xfd98_7193,
        0xa679_438e,
        0x49b4_0821,
        0xf61e_2562,
        0xc040_b340,
        0x265e_5a51,
        0xe9b6_c7aa,
        0xd62f_105d,
        0x0244_1453,
        0xd8a1_e681,
        0xe7d3_fbc8,
        0x21e1_cde6,
        0xc337_07d6,
        0xf4d5_0d87,
        0x455a_14ed,
        0xa9e3_e905,
        0xfcef_a3f8,
        0x676f_02d9,
        0x8d2a_4c8a,
        0xfffa_3942,
        0x8771_f681,
        0x6d9d_6122,
        0xfde5_380c,
        0xa4be_ea44,
        0x4bde_cfa9,
        0xf6bb_4b60,
        0xbebf_bc70,
        0x289b_7ec6,
        0xeaa1_27fa,
        0xd4ef_3085,
        0x0488_1d05,
        0xd9d4_d039,
        0xe6db_99e5,
        0x1fa2_7cf8,
        0xc4ac_5665,
        0xf429_2244,
        0x432a_ff97,
        0xab94_23a7,
        0xfc93_a039,
        0x655b_59c3,
        0x8f0c_cc92,
        0xffef_f47d,
        0x8584_5dd1,
        0x6fa8_7e4f,
        0xfe2c_e6e0,
        0xa301_4314,
        0x4e08_11a1,
        0xf753_7e82,
        0xbd3a_f235,
        0x2ad7_d2bb,
        0xeb86_d391,
    ];

    /// The MD5 of eight messages at once (unused lanes: pass empty slices and ignore their results).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn md5x8(lanes: &[&[u8]; 8]) -> [[u8; 16]; 8] {
        let padded: [Padded<'_>; 8] = std::array::from_fn(|i| Padded::new(lanes[i]));
        let rounds = padded.iter().map(|p| p.blocks).max().unwrap_or(0);
        let counts = _mm256_setr_epi32(
            padded[0].blocks as i32,
            padded[1].blocks as i32,
            padded[2].blocks as i32,
            padded[3].blocks as i32,
            padded[4].blocks as i32,
            padded[5].blocks as i32,
            padded[6].blocks as i32,
            padded[7].blocks as i32,
        );
        let mut a = _mm256_set1_epi32(0x6745_2301);
        let mut b = _mm256_set1_epi32(0xefcd_ab89_u32 as i32);
        let mut c = _mm256_set1_epi32(0x98ba_dcfe_u32 as i32);
        let mut d = _mm256_set1_epi32(0x1032_5476);
        for t in 0..rounds {
            let w = transpose(std::array::from_fn(|i| padded[i].block(t)));
            let (a0, b0, c0, d0) = (a, b, c, d);
            compress(&mut a, &mut b, &mut c, &mut d, &w);
            // Lanes whose message has ended keep their state.
            let active = _mm256_cmpgt_epi32(counts, _mm256_set1_epi32(t as i32));
            a = _mm256_blendv_epi8(a0, _mm256_add_epi32(a, a0), active);
            b = _mm256_blendv_epi8(b0, _mm256_add_epi32(b, b0), active);
            c = _mm256_blendv_epi8(c0, _mm256_add_epi32(c, c0), active);
            d = _mm256_blendv_epi8(d0, _mm256_add_epi32(d, d0), active);
        }
        let mut words = [[0u32; 8]; 4];
        for (out, v) in words.iter_mut().zip([a, b, c, d]) {
            // SAFETY: `out` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        }
        std::array::from_fn(|lane| {
            let mut sum = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                sum[i * 4..i * 4 + 4].copy_from_slice(&w[lane].to_le_bytes());
            }
            sum
        })
    }

    /// Word `g` of every lane's block in register `g`: two 8×8 transposes of 32-bit words.
    #[target_feature(enable = "avx2")]
    fn transpose(blocks: [&[u8]; 8]) -> [__m256i; 16] {
        let mut w = [_mm256_setzero_si256(); 16];
        for half in 0..2 {
            // Row i: words 8·half .. 8·half + 8 of lane i.
            let rows: [__m256i; 8] = std::array::from_fn(|i| {
                let bytes = &blocks[i][half * 32..half * 32 + 32];
                // SAFETY: `bytes` is exactly 32 readable bytes; the load is unaligned.
                unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
            });
            let t0 = _mm256_unpacklo_epi32(rows[0], rows[1]);
            let t1 = _mm256_unpackhi_epi32(rows[0], rows[1]);
            let t2 = _mm256_unpacklo_epi32(rows[2], rows[3]);
            let t3 = _mm256_unpackhi_epi32(rows[2], rows[3]);
            let t4 = _mm256_unpacklo_epi32(rows[4], rows[5]);
            let t5 = _mm256_unpackhi_epi32(rows[4], rows[5]);
            let t6 = _mm256_unpacklo_epi32(rows[6], rows[7]);
            let t7 = _mm256_unpackhi_epi32(rows[6], rows[7]);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            let o = half * 8;
            w[o] = _mm256_permute2x128_si256(u0, u4, 0x20);
            w[o + 1] = _mm256_permute2x128_si256(u1, u5, 0x20);
            w[o + 2] = _mm256_permute2x128_si256(u2, u6, 0x20);
            w[o + 3] = _mm256_permute2x128_si256(u3, u7, 0x20);
            w[o + 4] = _mm256_permute2x128_si256(u0, u4, 0x31);
            w[o + 5] = _mm256_permute2x128_si256(u1, u5, 0x31);
            w[o + 6] = _mm256_permute2x128_si256(u2, u6, 0x31);
            w[o + 7] = _mm256_permute2x128_si256(u3, u7, 0x31);
        }
        w
    }

    /// The 64 steps of one block on every lane (the caller adds the previous state).
    #[target_feature(enable = "avx2")]
    fn compress(a: &mut __m256i, b: &mut __m256i, c: &mut __m256i, d: &mut __m256i, w: &[__m256i; 16]) {
        let ones = _mm256_set1_epi32(-1);
        let f = |x: __m256i, y: __m256i, z: __m256i| _mm256_or_si256(_mm256_and_si256(x, y), _mm256_andnot_si256(x, z));
        let g = |x: __m256i, y: __m256i, z: __m256i| _mm256_or_si256(_mm256_and_si256(x, z), _mm256_andnot_si256(z, y));
        let h = |x: __m256i, y: __m256i, z: __m256i| _mm256_xor_si256(_mm256_xor_si256(x, y), z);
        let i = |x: __m256i, y: __m256i, z: __m256i| _mm256_xor_si256(y, _mm256_or_si256(x, _mm256_xor_si256(z, ones)));
        macro_rules! step {
            ($fun:ident, $a:ident, $b:ident, $c:ident, $d:ident, $k:expr, $g:expr, $s:literal) => {{
                let sum = _mm256_add_epi32(
                    _mm256_add_epi32(*$a, $fun(*$b, *$c, *$d)),
                    _mm256_add_epi32(_mm256_set1_epi32(K[$k] as i32), w[$g]),
                );
                let rotated = _mm256_or_si256(_mm256_slli_epi32::<$s>(sum), _mm256_srli_epi32::<{ 32 - $s }>(sum));
                *$a = _mm256_add_epi32(*$b, rotated);
            }};
        }
        macro_rules! four {
            ($fun:ident, $k:expr, [$g0:expr, $g1:expr, $g2:expr, $g3:expr], [$s0:literal, $s1:literal, $s2:literal, $s3:literal]) => {
                step!($fun, a, b, c, d, $k, $g0, $s0);
                step!($fun, d, a, b, c, $k + 1, $g1, $s1);
                step!($fun, c, d, a, b, $k + 2, $g2, $s2);
                step!($fun, b, c, d, a, $k + 3, $g3, $s3);
            };
        }
        four!(f, 0, [0, 1, 2, 3], [7, 12, 17, 22]);
        four!(f, 4, [4, 5, 6, 7], [7, 12, 17, 22]);
        four!(f, 8, [8, 9, 10, 11], [7, 12, 17, 22]);
        four!(f, 12, [12, 13, 14, 15], [7, 12, 17, 22]);
        four!(g, 16, [1, 6, 11, 0], [5, 9, 14, 20]);
        four!(g, 20, [5, 10, 15, 4], [5, 9, 14, 20]);
        four!(g, 24, [9, 14, 3, 8], [5, 9, 14, 20]);
        four!(g, 28, [13, 2, 7, 12], [5, 9, 14, 20]);
        four!(h, 32, [5, 8, 11, 14], [4, 11, 16, 23]);
        four!(h, 36, [1, 4, 7, 10], [4, 11, 16, 23]);
        four!(h, 40, [13, 0, 3, 6], [4, 11, 16, 23]);
        four!(h, 44, [9, 12, 15, 2], [4, 11, 16, 23]);
        four!(i, 48, [0, 7, 14, 5], [6, 10, 15, 21]);
        four!(i, 52, [12, 3, 10, 1], [6, 10, 15, 21]);
        four!(i, 56, [8, 15, 6, 13], [6, 10, 15, 21]);
        four!(i, 60, [4, 11, 2, 9], [6, 10, 15, 21]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random generator (xorshift), so failures reproduce.
    fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[test]
    fn batches_match_one_message_at_a_time_for_every_length() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        // Every length around the padding boundaries (55, 56, 63, 64, ...) and beyond, in batches of 1..=20.
        let mut bodies: Vec<Vec<u8>> = (0..300).map(|len| bytes(&mut seed, len)).collect();
        bodies.extend([1024, 1025, 4096, 10_000].map(|len| bytes(&mut seed, len)));
        for batch in 1..=20 {
            for chunk in bodies.chunks(batch) {
                let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                let sums = md5_each(&refs);
                for (body, sum) in chunk.iter().zip(&sums) {
                    assert_eq!(*sum, <[u8; 16]>::from(Md5::digest(body)), "length {}", body.len());
                }
            }
        }
    }

    #[test]
    fn known_digests_in_upper_case_hex() {
        let sums = md5_each(&[b"", b"hello", b"The quick brown fox jumps over the lazy dog"]);
        let hex: Vec<String> = sums.iter().map(upper_hex).collect();
        assert_eq!(
            hex,
            [
                "D41D8CD98F00B204E9800998ECF8427E",
                "5D41402ABC4B2A76B9719D911017C592",
                "9E107D9D372BB6826BD81D3542A419D6"
            ]
        );
    }
}
