//! Reference for `shaders/residual.wgsl`: the addition that closes a residual block, alone
//! and fused with the ReLU after it, over flat slices (any tensor shape, row-major). The
//! fused backward takes what the kernel takes: the forward output y.

use super::Real;

/// y = a + b
pub fn add_forward<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().zip(b).map(|(&u, &v)| u + v).collect()
}

/// y = max(a + b, 0)
pub fn add_relu_forward<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter()
        .zip(b)
        .map(|(&u, &v)| (u + v).max(T::zero()))
        .collect()
}

/// The gradient each input of y = a + b receives: da = db = dy.
pub fn add_backward<T: Real>(dy: &[T]) -> Vec<T> {
    dy.to_vec()
}

/// The gradient each input of y = max(a + b, 0) receives: da = db = dy·[y > 0] (0 at
/// a + b = 0, as PyTorch), with y the forward output.
pub fn add_relu_backward<T: Real>(y: &[T], dy: &[T]) -> Vec<T> {
    y.iter()
        .zip(dy)
        .map(|(&v, &g)| if v > T::zero() { g } else { T::zero() })
        .collect()
}
