//! References of `shaders/pack.wgsl`: each returns the texels as `4·len` f32, in order.

use super::Real;

/// See `pack_nhwc4` (`unfold` 1 for the plain layout).
pub fn nhwc4<T: Real>(x: &[T], [n, c, h, w]: [usize; 4], pad: usize, unfold: usize) -> Vec<T> {
    let (cu, hp, wu) = (c * unfold, h + 2 * pad, w + 2 * pad + 1 - unfold);
    let c4 = cu.div_ceil(4);
    let mut out = vec![T::zero(); n * hp * wu * c4 * 4];
    for img in 0..n {
        for ch in 0..cu {
            let (src_ch, kx) = (ch / unfold, ch % unfold);
            for y in 0..h {
                for xq in 0..wu {
                    // Source column of packed column xq at tap kx, if inside x.
                    let Some(xs) = (xq + kx).checked_sub(pad).filter(|&v| v < w) else {
                        continue;
                    };
                    let texel = ((img * hp + y + pad) * wu + xq) * c4 + ch / 4;
                    out[texel * 4 + ch % 4] = x[((img * c + src_ch) * h + y) * w + xs];
                }
            }
        }
    }
    out
}

/// See `pack_images4` (`x` is `[n, 1, h, w]`).
pub fn images4<T: Real>(x: &[T], [n, c, h, w]: [usize; 4], pad: usize) -> Vec<T> {
    assert_eq!(c, 1, "pack_images4 packs single-channel images");
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut out = vec![T::zero(); n.div_ceil(4) * hp * wp * 4];
    for img in 0..n {
        for y in 0..h {
            for xs in 0..w {
                let texel = ((img / 4) * hp + y + pad) * wp + xs + pad;
                out[texel * 4 + img % 4] = x[(img * h + y) * w + xs];
            }
        }
    }
    out
}

/// See `pack_conv_weight` (`unfold` 1 for the plain layout, or KW; not with `flip`).
pub fn conv_weight<T: Real>(
    wt: &[T],
    [o, c, kh, kw]: [usize; 4],
    flip: bool,
    unfold: usize,
) -> Vec<T> {
    let (ci, co) = if flip { (o, c) } else { (c * unfold, o) };
    let (ci4, co4, taps) = (ci.div_ceil(4), co.div_ceil(4), kh * kw);
    let packed_taps = taps / unfold;
    let mut out = vec![T::zero(); packed_taps * ci4 * 4 * co4 * 4];
    for tap in 0..packed_taps {
        for i in 0..ci {
            for j in 0..co {
                let v = if flip {
                    wt[(i * c + j) * taps + taps - 1 - tap]
                } else {
                    wt[(j * c + i / unfold) * taps + tap * unfold + i % unfold]
                };
                let texel = ((tap * ci4 + i / 4) * 4 + i % 4) * co4 + j / 4;
                out[texel * 4 + j % 4] = v;
            }
        }
    }
    out
}

/// See `pack_rows4`: `a` is `[r, k]`, or `[k, r]` when `transposed`.
pub fn rows4<T: Real>(a: &[T], r: usize, k: usize, transposed: bool) -> Vec<T> {
    let k4 = k.div_ceil(4);
    let mut out = vec![T::zero(); r * k4 * 4];
    for i in 0..r {
        for j in 0..k {
            out[i * k4 * 4 + j] = if transposed {
                a[j * r + i]
            } else {
                a[i * k + j]
            };
        }
    }
    out
}
