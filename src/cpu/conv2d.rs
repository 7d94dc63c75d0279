//! Reference for `shaders/conv2d.wgsl`. x: [N, C, H, W], w: [O, C, KH, KW], b: [O],
//! y: [N, O, OH, OW], all row-major; taps outside the image read as zero (padding).

use super::Real;
pub use crate::vocab::Conv2dGeometry;

/// The input coordinate that output position `out` reads through kernel tap `k`, if inside.
fn input_coord(out: usize, k: usize, g: &Conv2dGeometry, size: usize) -> Option<usize> {
    (out * g.stride + k)
        .checked_sub(g.pad)
        .filter(|&i| i < size)
}

/// y[n, o, oy, ox] = b[o] + Σ_{c, ky, kx} w[o, c, ky, kx]·x[n, c, oy·s − pad + ky, ox·s − pad + kx]
pub fn conv2d_forward<T: Real>(x: &[T], w: &[T], b: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut y = vec![T::zero(); g.n * g.o * oh * ow];
    for n in 0..g.n {
        for o in 0..g.o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = T::zero();
                    for c in 0..g.c {
                        for ky in 0..g.kh {
                            let Some(iy) = input_coord(oy, ky, g, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ix) = input_coord(ox, kx, g, g.w) else {
                                    continue;
                                };
                                s += w[((o * g.c + c) * g.kh + ky) * g.kw + kx]
                                    * x[((n * g.c + c) * g.h + iy) * g.w + ix];
                            }
                        }
                    }
                    y[((n * g.o + o) * oh + oy) * ow + ox] = s + b[o];
                }
            }
        }
    }
    y
}

/// dx[n, c, iy, ix] = Σ over (o, oy, ox, ky, kx) with iy = oy·s − pad + ky, ix = ox·s − pad + kx
/// of dy[n, o, oy, ox]·w[o, c, ky, kx]. Written as the scatter of the forward's taps.
pub fn conv2d_grad_input<T: Real>(dy: &[T], w: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut dx = vec![T::zero(); g.n * g.c * g.h * g.w];
    for n in 0..g.n {
        for o in 0..g.o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let grad = dy[((n * g.o + o) * oh + oy) * ow + ox];
                    for c in 0..g.c {
                        for ky in 0..g.kh {
                            let Some(iy) = input_coord(oy, ky, g, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ix) = input_coord(ox, kx, g, g.w) else {
                                    continue;
                                };
                                dx[((n * g.c + c) * g.h + iy) * g.w + ix] +=
                                    grad * w[((o * g.c + c) * g.kh + ky) * g.kw + kx];
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// dw[o, c, ky, kx] = Σ_{n, oy, ox} dy[n, o, oy, ox]·x[n, c, oy·s − pad + ky, ox·s − pad + kx]
pub fn conv2d_grad_weight<T: Real>(dy: &[T], x: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut dw = vec![T::zero(); g.o * g.c * g.kh * g.kw];
    for o in 0..g.o {
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let mut s = T::zero();
                    for n in 0..g.n {
                        for oy in 0..oh {
                            let Some(iy) = input_coord(oy, ky, g, g.h) else {
                                continue;
                            };
                            for ox in 0..ow {
                                let Some(ix) = input_coord(ox, kx, g, g.w) else {
                                    continue;
                                };
                                s += dy[((n * g.o + o) * oh + oy) * ow + ox]
                                    * x[((n * g.c + c) * g.h + iy) * g.w + ix];
                            }
                        }
                    }
                    dw[((o * g.c + c) * g.kh + ky) * g.kw + kx] = s;
                }
            }
        }
    }
    dw
}

/// dw[i] = Σ_split partial[split, i]: the second pass of a split grad_weight.
pub fn conv2d_grad_weight_reduce<T: Real>(partial: &[T], splits: usize) -> Vec<T> {
    let len = partial.len() / splits;
    let mut dw = vec![T::zero(); len];
    for split in 0..splits {
        for i in 0..len {
            dw[i] += partial[split * len + i];
        }
    }
    dw
}

/// db[o] = Σ_{n, oy, ox} dy[n, o, oy, ox]
pub fn conv2d_grad_bias<T: Real>(dy: &[T], n: usize, o: usize, plane: usize) -> Vec<T> {
    let mut db = vec![T::zero(); o];
    for img in 0..n {
        for ch in 0..o {
            for i in 0..plane {
                db[ch] += dy[(img * o + ch) * plane + i];
            }
        }
    }
    db
}
