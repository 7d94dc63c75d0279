//! Reference for `shaders/pool.wgsl`: 2-D max and average pooling, NCHW, square window of
//! side `k`, stride `s`, OH = (H + 2·pad − k)/s + 1 and OW = (W + 2·pad − k)/s + 1
//! (floored: trailing rows and columns no window reaches are dropped, as in PyTorch); and
//! global average pooling, the mean of each plane. Max pooling takes PyTorch's padding
//! (`pad` ≤ k/2 rows and columns of −∞ on every side, so a padded position is never
//! chosen); average pooling takes none.
//!
//! x, dx: [N, C, H, W]; y, dy, argmax: [N, C, OH, OW]; all row-major. `argmax` holds, for each
//! output, the index h·W + w of the chosen element within its own input plane.
//!
//! The backward references are written as scatters (each output hands its gradient to the
//! inputs it read: the adjoint of the forward, i.e. the definition). The kernels gather
//! instead (each input sums over the windows that contain it), so the tests compare two
//! formulations rather than one loop nest with itself.

use super::Real;

/// (OH, OW) of a k×k pooling with stride s and padding `pad` over an H×W plane.
pub fn output_size(h: usize, w: usize, k: usize, s: usize, pad: usize) -> (usize, usize) {
    ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1)
}

/// The input rows (or columns) `[start, end)` of window `o` along an axis of `len`: its span
/// `o·s − pad .. o·s − pad + k` clipped to the input, as PyTorch's CPU kernel clips it.
fn window_span(o: usize, len: usize, k: usize, s: usize, pad: usize) -> (usize, usize) {
    let start = (o * s) as isize - pad as isize;
    let end = (start + k as isize).min(len as isize);
    (start.max(0) as usize, end as usize)
}

/// y[n, c, oy, ox] = max over the window x[n, c, oy·s − pad .. oy·s − pad + k,
/// ox·s − pad .. ox·s − pad + k], positions outside the input left out (PyTorch's −∞
/// padding); argmax = the in-plane index of the first maximum in row-major window order
/// (PyTorch's tie rule).
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    pad: usize,
) -> (Vec<T>, Vec<u32>) {
    let (oh, ow) = output_size(h, w, k, s, pad);
    let planes = n * c;
    let mut y = vec![T::zero(); planes * oh * ow];
    let mut argmax = vec![0u32; planes * oh * ow];
    for plane in 0..planes {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            let (y0, y1) = window_span(oy, h, k, s, pad);
            for ox in 0..ow {
                let (x0, x1) = window_span(ox, w, k, s, pad);
                let mut best_idx = y0 * w + x0;
                let mut best = xp[best_idx];
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let idx = iy * w + ix;
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
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_relu_forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    pad: usize,
) -> (Vec<T>, Vec<u32>) {
    let (mut y, mut argmax) = max_pool2d_forward(x, n, c, h, w, k, s, pad);
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
    pad: usize,
) -> Vec<T> {
    let (oh, ow) = output_size(h, w, k, s, pad);
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

/// See `max_pool2d_backward_tex`: [`max_pool2d_backward`] with s = k and no padding,
/// packed as `cpu::pack::nhwc4` with border `border` packs it (the texels as `4·len`
/// values).
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_backward_nhwc4<T: Real>(
    dy: &[T],
    argmax: &[u32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    border: usize,
) -> Vec<T> {
    let dx = max_pool2d_backward(dy, argmax, n, c, h, w, k, k, 0);
    super::pack::nhwc4(&dx, [n, c, h, w], border, 1)
}

/// y[n, c, oy, ox] = (Σ over the k×k window of x) / k² (no padding).
pub fn avg_pool2d_forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
) -> Vec<T> {
    let (oh, ow) = output_size(h, w, k, s, 0);
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
    let (oh, ow) = output_size(h, w, k, s, 0);
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

/// y[n, c] = (Σ over the plane x[n, c, ·, ·]) / (H·W), summed in row-major order.
pub fn global_avg_pool2d_forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Vec<T> {
    let area = T::from_f64((h * w) as f64);
    x.chunks(h * w)
        .take(n * c)
        .map(|plane| {
            let mut sum = T::zero();
            for &v in plane {
                sum += v;
            }
            sum / area
        })
        .collect()
}

/// dx[n, c, i, j] = dy[n, c] / (H·W): every element of a plane had the same weight in its
/// mean.
pub fn global_avg_pool2d_backward<T: Real>(
    dy: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Vec<T> {
    let area = T::from_f64((h * w) as f64);
    dy[..n * c]
        .iter()
        .flat_map(|&g| std::iter::repeat_n(g / area, h * w))
        .collect()
}
