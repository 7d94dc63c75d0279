//! Reference for `shaders/batchnorm.wgsl`: batch normalisation with PyTorch's
//! `nn.BatchNorm1d` / `nn.BatchNorm2d` semantics, train and eval mode, and its gradients.
//!
//! x, y, dy, dx: [N, C, H, W] or [N, C] (H·W = 1), row-major, described by [`Dims`]; γ, β,
//! the running statistics, dγ, dβ: [C]; `saved`: [2, C], the batch mean in row 0 and the
//! inverse standard deviation 1/sqrt(var + eps) in row 1. Each function mirrors one entry
//! point's loops; the sums run in element order, where the kernels add per-invocation
//! partial sums by a tree, so the tests compare two orders rather than one loop with itself.

use super::Real;

/// The sizes of a batch normalisation: `n` samples, `c` channels (features), `hw` elements
/// per channel and sample (H·W; 1 for [N, C]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Dims {
    /// The dims of an [N, C] or [N, C, H, W] shape.
    pub fn of(shape: &[usize]) -> Option<Dims> {
        match *shape {
            [n, c] => Some(Dims { n, c, hw: 1 }),
            [n, c, h, w] => Some(Dims { n, c, hw: h * w }),
            _ => None,
        }
    }

    /// M = N·H·W: the elements one channel's statistics are taken over.
    pub fn count(self) -> usize {
        self.n * self.hw
    }

    /// The elements of x: N·C·H·W.
    pub fn elements(self) -> usize {
        self.n * self.c * self.hw
    }

    /// The index in x of element j (= n·HW + s) of channel `c`.
    pub fn element(self, c: usize, j: usize) -> usize {
        let (n, s) = (j / self.hw, j % self.hw);
        (n * self.c + c) * self.hw + s
    }

    /// The channel of x's element i.
    pub fn channel(self, i: usize) -> usize {
        (i / self.hw) % self.c
    }
}

/// The train forward's statistics: per channel the mean and the biased variance over its M
/// elements, in two passes (mean, then Σ(x − mean)²); returns `saved` = [mean; 1/sqrt(var +
/// eps)] and updates the running statistics in place: r ← (1 − momentum)·r + momentum·s,
/// with the unbiased variance Σ(x − mean)²/(M − 1) for the running variance (M ≥ 2).
pub fn batch_norm_stats<T: Real>(
    x: &[T],
    d: Dims,
    eps: T,
    momentum: T,
    running_mean: &mut [T],
    running_var: &mut [T],
) -> Vec<T> {
    let m = T::from_f64(d.count() as f64);
    let mut saved = vec![T::zero(); 2 * d.c];
    for c in 0..d.c {
        let mut s = T::zero();
        for j in 0..d.count() {
            s += x[d.element(c, j)];
        }
        let mean = s / m;
        let mut q = T::zero();
        for j in 0..d.count() {
            let dev = x[d.element(c, j)] - mean;
            q += dev * dev;
        }
        saved[c] = mean;
        saved[d.c + c] = T::one() / (q / m + eps).sqrt();
        let unbiased = q / T::from_f64((d.count() - 1) as f64);
        let keep = T::one() - momentum;
        running_mean[c] = keep * running_mean[c] + momentum * mean;
        running_var[c] = keep * running_var[c] + momentum * unbiased;
    }
    saved
}

/// y = (x − mean)·invstd·γ + β with the train forward's `saved` statistics.
pub fn batch_norm_normalize<T: Real>(
    x: &[T],
    saved: &[T],
    gamma: &[T],
    beta: &[T],
    d: Dims,
) -> Vec<T> {
    (0..d.elements())
        .map(|i| {
            let c = d.channel(i);
            (x[i] - saved[c]) * saved[d.c + c] * gamma[c] + beta[c]
        })
        .collect()
}

/// Eval mode: y = (x − running_mean)/sqrt(running_var + eps)·γ + β.
pub fn batch_norm_eval_forward<T: Real>(
    x: &[T],
    running_mean: &[T],
    running_var: &[T],
    gamma: &[T],
    beta: &[T],
    d: Dims,
    eps: T,
) -> Vec<T> {
    (0..d.elements())
        .map(|i| {
            let c = d.channel(i);
            let invstd = T::one() / (running_var[c] + eps).sqrt();
            (x[i] - running_mean[c]) * invstd * gamma[c] + beta[c]
        })
        .collect()
}

/// The train backward's sums, per channel: (dγ, dβ) = (Σ dy·x̂, Σ dy) with
/// x̂ = (x − mean)·invstd from `saved`.
pub fn batch_norm_grad_reduce<T: Real>(
    x: &[T],
    dy: &[T],
    saved: &[T],
    d: Dims,
) -> (Vec<T>, Vec<T>) {
    let mut dgamma = vec![T::zero(); d.c];
    let mut dbeta = vec![T::zero(); d.c];
    for c in 0..d.c {
        let (mean, invstd) = (saved[c], saved[d.c + c]);
        let (mut sg, mut sb) = (T::zero(), T::zero());
        for j in 0..d.count() {
            let i = d.element(c, j);
            let xhat = (x[i] - mean) * invstd;
            sb += dy[i];
            sg += dy[i] * xhat;
        }
        dgamma[c] = sg;
        dbeta[c] = sb;
    }
    (dgamma, dbeta)
}

/// The train backward's dx = γ·invstd/M · (M·dy − Σdy − x̂·Σ(dy·x̂)), from the sums of
/// [`batch_norm_grad_reduce`] (`dgamma` = Σ dy·x̂, `dbeta` = Σ dy).
pub fn batch_norm_grad_input<T: Real>(
    x: &[T],
    dy: &[T],
    gamma: &[T],
    saved: &[T],
    dgamma: &[T],
    dbeta: &[T],
    d: Dims,
) -> Vec<T> {
    let m = T::from_f64(d.count() as f64);
    (0..d.elements())
        .map(|i| {
            let c = d.channel(i);
            let invstd = saved[d.c + c];
            let xhat = (x[i] - saved[c]) * invstd;
            let k = gamma[c] * invstd / m;
            k * (m * dy[i] - dbeta[c] - xhat * dgamma[c])
        })
        .collect()
}

/// Eval mode: dx = dy·γ/sqrt(running_var + eps) (the statistics are constants).
pub fn batch_norm_eval_grad_input<T: Real>(
    dy: &[T],
    gamma: &[T],
    running_var: &[T],
    d: Dims,
    eps: T,
) -> Vec<T> {
    (0..d.elements())
        .map(|i| {
            let c = d.channel(i);
            dy[i] * (gamma[c] / (running_var[c] + eps).sqrt())
        })
        .collect()
}
