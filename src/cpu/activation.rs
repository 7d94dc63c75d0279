//! Reference for `shaders/activation.wgsl`: elementwise activations over flat slices (any
//! tensor shape, row-major). The backwards take what the kernels take: ReLU the forward
//! input x, sigmoid and tanh the forward output y.

use super::Real;

/// y = max(x, 0)
pub fn relu_forward<T: Real>(x: &[T]) -> Vec<T> {
    x.iter().map(|&v| v.max(T::zero())).collect()
}

/// dx = dy·[x > 0] (0 at x = 0, as PyTorch), with x the forward input.
pub fn relu_backward<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| if v > T::zero() { g } else { T::zero() })
        .collect()
}

/// y = 1 / (1 + e^−x), evaluated as 1/(1 + e^−|x|) for x ≥ 0 and e^−|x|/(1 + e^−|x|) for
/// x < 0, so that the exponential never overflows.
pub fn sigmoid_forward<T: Real>(x: &[T]) -> Vec<T> {
    x.iter()
        .map(|&v| {
            let e = (-v.abs()).exp();
            if v >= T::zero() {
                T::one() / (T::one() + e)
            } else {
                e / (T::one() + e)
            }
        })
        .collect()
}

/// dx = dy·y·(1 − y), with y the forward output.
pub fn sigmoid_backward<T: Real>(y: &[T], dy: &[T]) -> Vec<T> {
    y.iter()
        .zip(dy)
        .map(|(&s, &g)| g * s * (T::one() - s))
        .collect()
}

/// y = tanh(x)
pub fn tanh_forward<T: Real>(x: &[T]) -> Vec<T> {
    x.iter().map(|&v| v.tanh()).collect()
}

/// dx = dy·(1 − y²), with y the forward output.
pub fn tanh_backward<T: Real>(y: &[T], dy: &[T]) -> Vec<T> {
    y.iter()
        .zip(dy)
        .map(|(&t, &g)| g * (T::one() - t * t))
        .collect()
}

/// dx += dy
pub fn accumulate_grad<T: Real>(dy: &[T], dx: &mut [T]) {
    for (d, &g) in dx.iter_mut().zip(dy) {
        *d += g;
    }
}
