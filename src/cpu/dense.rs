//! Reference for `shaders/dense.wgsl`. x: [N, K], w: [M, K], b: [M], y: [N, M], row-major.

use super::Real;

/// y[n, m] = Σ_k x[n, k]·w[m, k] + b[m]
pub fn dense_forward<T: Real>(x: &[T], w: &[T], b: &[T], n: usize, k: usize, m: usize) -> Vec<T> {
    let mut y = vec![T::zero(); n * m];
    for i in 0..n {
        for j in 0..m {
            let mut s = T::zero();
            for kk in 0..k {
                s += x[i * k + kk] * w[j * k + kk];
            }
            y[i * m + j] = s + b[j];
        }
    }
    y
}

/// dx[n, k] = Σ_m dy[n, m]·w[m, k]
pub fn dense_grad_input<T: Real>(dy: &[T], w: &[T], n: usize, k: usize, m: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); n * k];
    for i in 0..n {
        for kk in 0..k {
            let mut s = T::zero();
            for j in 0..m {
                s += dy[i * m + j] * w[j * k + kk];
            }
            dx[i * k + kk] = s;
        }
    }
    dx
}

/// dw[m, k] = Σ_n dy[n, m]·x[n, k]
pub fn dense_grad_weight<T: Real>(dy: &[T], x: &[T], n: usize, k: usize, m: usize) -> Vec<T> {
    let mut dw = vec![T::zero(); m * k];
    for j in 0..m {
        for kk in 0..k {
            let mut s = T::zero();
            for i in 0..n {
                s += dy[i * m + j] * x[i * k + kk];
            }
            dw[j * k + kk] = s;
        }
    }
    dw
}

/// db[m] = Σ_n dy[n, m]
pub fn dense_grad_bias<T: Real>(dy: &[T], n: usize, m: usize) -> Vec<T> {
    let mut db = vec![T::zero(); m];
    for i in 0..n {
        for j in 0..m {
            db[j] += dy[i * m + j];
        }
    }
    db
}
