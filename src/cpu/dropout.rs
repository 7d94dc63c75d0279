//! Reference for `shaders/dropout.wgsl`: PyTorch's `nn.Dropout(p)` in training (each element
//! zeroed with probability p, the survivors scaled by 1/(1 − p)) over flat slices, with the
//! mask drawn by the same counter-based generator as the kernels, Philox4x32-10, bit for
//! bit: element i is kept where word i % 4 of `philox4x32_10([i / 4, step, 0, 0],
//! [seed, stream])` is at least [`threshold`]`(p)`.
//!
//! The generator here multiplies in 64 bits where the shader assembles the high word from
//! 16-bit halves, so the tests compare two formulations of it; this one is checked against
//! the published known answers (Random123's `kat_vectors`).

use super::Real;

/// Philox4x32's round multipliers (Random123's `PHILOX_M4x32_0`, `PHILOX_M4x32_1`).
const M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
/// The Weyl increments of its key schedule (`PHILOX_W32_0`, `PHILOX_W32_1`).
const W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

/// Philox4x32-10: ten rounds of the keyed bijection of `counter`, the key bumped by the
/// Weyl increments before every round but the first (Random123's `philox4x32_R(10, …)`).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W[0]), k[1].wrapping_add(W[1])];
        }
        let p0 = u64::from(M[0]) * u64::from(c[0]);
        let p1 = u64::from(M[1]) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The 32-bit word below which an element is dropped: round(p·2³²). A word is uniform on
/// [0, 2³²), so an element is kept with probability 1 − threshold/2³², which is 1 − p to
/// within 2⁻³³. p < 1 in f32 is at most 1 − 2⁻²⁴, so the threshold fits a u32.
pub fn threshold(p: f32) -> u32 {
    assert!((0.0..1.0).contains(&p), "dropout p = {p} is not in [0, 1)");
    (f64::from(p) * 4_294_967_296.0).round() as u32
}

/// 1/(1 − p), the survivors' factor, in f64 (each type rounds it once).
pub fn scale(p: f32) -> f64 {
    1.0 / (1.0 - f64::from(p))
}

/// The mask of `len` elements: true where an element is kept.
pub fn keeps(len: usize, p: f32, seed: u32, step: u32, stream: u32) -> Vec<bool> {
    let threshold = threshold(p);
    let mut mask = Vec::with_capacity(len);
    for block in 0..len.div_ceil(4) {
        let words = philox4x32_10([block as u32, step, 0, 0], [seed, stream]);
        for (e, &u) in words.iter().enumerate() {
            if 4 * block + e < len {
                mask.push(u >= threshold);
            }
        }
    }
    mask
}

/// y = x·keep·scale, elementwise; `keep` the mask of [`keeps`].
pub fn dropout_forward<T: Real>(x: &[T], p: f32, seed: u32, step: u32, stream: u32) -> Vec<T> {
    let factor = T::from_f64(scale(p));
    x.iter()
        .zip(keeps(x.len(), p, seed, step, stream))
        .map(|(&v, keep)| v * if keep { factor } else { T::zero() })
        .collect()
}

/// dx = dy·keep·scale: the same mask as the forward's with the same (seed, step, stream).
pub fn dropout_backward<T: Real>(dy: &[T], p: f32, seed: u32, step: u32, stream: u32) -> Vec<T> {
    dropout_forward(dy, p, seed, step, stream)
}
