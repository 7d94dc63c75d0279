//! Reference for `shaders/pool.wgsl`: 2-D max and average pooling, NCHW, square window of
//! side `k`, stride `s`, no padding, OH = (H − k)/s + 1 and OW = (W − k)/s + 1 (floored:
//! trailing rows and columns no window reaches are dropped, as in PyTorch).
//!
//! x, dx: [N, C, H, W]; y, dy, argmax: [N, C, OH, OW]; all row-major. `argmax` holds, for each
//! output, the index h·W + w of the chosen element within its own input plane.
//!
//! The backward references are written as scatters (each output hands its gradient to the
//! inputs it read: the adjoint of the forward, i.e. the definition). The kernels gather
//! instead (each input sums over the windows that contain it), so the tests compare two
//! formulations rather than one loop nest with itself.

use super::Real;

/// (OH, OW) of a k×k pooling with stride s over an H×W plane.
pub fn output_size(h: usize, w: usize, k: usize, s: usize) -> (usize, usize) {
    ((h - k) / s + 1, (w - k) / s + 1)
}

/// y[n, c, oy, ox] = max over the window x[n, c, oy·s .. oy·s + k, ox·s .. ox·s + k];
/// argmax = the in-plane index of the first maximum in row-major window order (PyTorch's
/// tie rule).
pub fn max_pool2d_forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
) -> (Vec<T>, Vec<u32>) {
    let (oh, ow) = output_size(h, w, k, s);
    let planes = n * c;
    let mut y = vec![T::zero(); planes * oh * ow];
    let mut argmax = vec![0u32; planes * oh * ow];
    for plane in 0..planes {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best_idx = oy * s * w + ox * s;
                let mut best = xp[best_idx];
                for ky in 0..k {
                    for kx in 0..k {
                        let idx = (oy * s + ky) * w + ox * s + kx;
                        if xp[idx] > best {
                            best = xp[idx];
                            best_idx = idx;
                        }
                    }
                }
                let o = (plane * oh + oy) * ow + ox;
                y[o] = best;
                argmax[o] = best_idx as u32;
            }
        }
    }
    (y, argmax)
}

/// The `argmax` of a window that passes no gradient (see [`max_pool2d_relu_forward`]).
pub const NONE: u32 = u32::MAX;

/// relu(max_pool2d(x)): y = max(window max, 0); argmax as [`max_pool2d_forward`]'s where the
/// window max is above 0, else [`NONE`] (ReLU's gradient there is 0).
pub fn max_pool2d_relu_forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
) -> (Vec<T>, Vec<u32>) {
    let (mut y, mut argmax) = max_pool2d_forward(x, n, c, h, w, k, s);
    for (v, a) in y.iter_mut().zip(&mut argmax) {
        if *v <= T::zero() {
            *v = T::zero();
            *a = NONE;
        }
    }
    (y, argmax)
}

/// dx[n, c, argmax[n, c, oy, ox]] += dy[n, c, oy, ox] for every output but those with
/// argmax [`NONE`]; inputs no window chose get 0.
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_backward<T: Real>(
    dy: &[T],
    argmax: &[u32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
) -> Vec<T> {
    let (oh, ow) = output_size(h, w, k, s);
    let mut dx = vec![T::zero(); n * c * h * w];
    for plane in 0..n * c {
        for o in plane * oh * ow..(plane + 1) * oh * ow {
            if argmax[o] != NONE {
                dx[plane * h * w + argmax[o] as usize] += dy[o];
            }
        }
    }
    dx
}

/// See `max_pool2d_backward_tex`: [`max_pool2d_backward`] with s = k, packed as
/// `cpu::pack::nhwc4` with `pad` packs it (the texels as `4·len` values).
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_backward_nhwc4<T: Real>(
    dy: &[T],
    argmax: &[u32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
) -> Vec<T> {
    let dx = max_pool2d_backward(dy, argmax, n, c, h, w, k, k);
    super::pack::nhwc4(&dx, [n, c, h, w], pad, 1)
}

/// y[n, c, oy, ox] = (Σ over the k×k window of x) / k².
pub fn avg_pool2d_forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
) -> Vec<T> {
    let (oh, ow) = output_size(h, w, k, s);
    let area = T::from_f64((k * k) as f64);
    let mut y = vec![T::zero(); n * c * oh * ow];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = T::zero();
                for ky in 0..k {
                    for kx in 0..k {
                        sum += x[(plane * h + oy * s + ky) * w + ox * s + kx];
                    }
                }
                y[(plane * oh + oy) * ow + ox] = sum / area;
            }
        }
    }
    y
}

/// dx[n, c, i, j] += dy[n, c, oy, ox] / k² for every window (oy, ox) containing (i, j).
pub fn avg_pool2d_backward<T: Real>(
    dy: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
) -> Vec<T> {
    let (oh, ow) = output_size(h, w, k, s);
    let area = T::from_f64((k * k) as f64);
    let mut dx = vec![T::zero(); n * c * h * w];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let g = dy[(plane * oh + oy) * ow + ox] / area;
                for ky in 0..k {
                    for kx in 0..k {
                        dx[(plane * h + oy * s + ky) * w + ox * s + kx] += g;
                    }
                }
            }
        }
    }
    dx
}
