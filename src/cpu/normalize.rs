//! Reference for `shaders/normalize.wgsl`: row-wise L2 normalisation with PyTorch's
//! `F.normalize` semantics. x, y, dy, dx: [B, D]; norms: [B]; row-major.

use super::Real;

/// The clamp on the norm, as in PyTorch's `F.normalize(eps=1e-12)`.
pub const EPS: f64 = 1e-12;

/// y[b, :] = x[b, :] / norms[b], norms[b] = max(‖x[b, :]‖₂, EPS). Returns (y, norms).
pub fn l2_normalize_forward<T: Real>(x: &[T], b: usize, d: usize) -> (Vec<T>, Vec<T>) {
    let eps = T::from_f64(EPS);
    let mut y = vec![T::zero(); b * d];
    let mut norms = vec![T::zero(); b];
    for i in 0..b {
        let mut s = T::zero();
        for j in 0..d {
            s += x[i * d + j] * x[i * d + j];
        }
        let norm = s.sqrt().max(eps);
        for j in 0..d {
            y[i * d + j] = x[i * d + j] / norm;
        }
        norms[i] = norm;
    }
    (y, norms)
}

/// dx[b, :] = (dy[b, :] − y[b, :]·⟨y[b, :], dy[b, :]⟩) / norms[b] where norms[b] > EPS;
/// dx[b, :] = dy[b, :] / EPS where the forward clamped the norm (y = x/EPS is linear there).
pub fn l2_normalize_backward<T: Real>(
    y: &[T],
    norms: &[T],
    dy: &[T],
    b: usize,
    d: usize,
) -> Vec<T> {
    let eps = T::from_f64(EPS);
    let mut dx = vec![T::zero(); b * d];
    for i in 0..b {
        let norm = norms[i];
        let mut dot = T::zero();
        for j in 0..d {
            dot += y[i * d + j] * dy[i * d + j];
        }
        for j in 0..d {
            let g = dy[i * d + j];
            dx[i * d + j] = if norm > eps {
                (g - y[i * d + j] * dot) / norm
            } else {
                g / eps
            };
        }
    }
    dx
}
