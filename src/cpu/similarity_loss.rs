//! Reference for `shaders/similarity_loss.wgsl`: the losses on a cosine-similarity matrix
//! between a batch (rows) and a reference set (columns) — ArcFace, CosFace and Sub-center
//! ArcFace over learned class weights, ProxyAnchor over learned proxies, SupCon, NT-Xent and
//! Multi-Similarity over the batch itself. Each function mirrors one entry point: `rows`
//! the first pass (one row of partial sums per batch row, per proxy for ProxyAnchor),
//! `reduce` the one-workgroup sum, `backward` the elementwise gradient.
//!
//! The matrix is the cosine DISTANCE `dm = 1 − s` that `distance.wgsl`'s pairwise cosine
//! writes; every loss reads `s = 1 − dm` and the gradient is `∂L/∂dm = −∂L/∂s`.
//!
//! Sums here run in index order; the GPU's run strided over 64 invocations and then as a
//! tree, and its `exp`/`log` are not correctly rounded: the tests bound the difference.

use super::Real;
use crate::vocab::{MarginKind, SimilarityLoss};

/// Columns of a row of partial sums (`ROW` in the shader): n0, d0, n1, d1 (the loss is
/// Σn0/Σd0 + Σn1/Σd1, a term dropped when its divisor is 0), a, b (two statistics the
/// reduction sums), then four values of the row that the backward reads.
pub const ROW: usize = 10;

/// `stats` of a forward: Σd0, Σd1, Σa, Σb.
pub const STATS: usize = 4;

/// The kernels' "no value" bounds: finite, so that no infinity enters the arithmetic.
const NONE_BELOW: f64 = -1e30;
const NONE_ABOVE: f64 = 1e30;

/// Below this, sin θ of ArcFace's derivative `cos m + sin m·cos θ / sin θ` is taken as this:
/// at cos θ = ±1 the exact derivative is infinite (PyTorch's autograd gives inf or NaN there).
pub const MIN_SIN: f64 = 1e-6;

/// The matrix a loss reads and the labels of its rows and columns.
#[derive(Debug, Clone, Copy)]
pub struct Similarities<'a, T> {
    /// `[n, r]`, row-major: cosine distances `1 − s`.
    pub dm: &'a [T],
    pub n: usize,
    pub r: usize,
    /// `[n]` class ids of the rows.
    pub labels: &'a [u32],
    /// `[r]` class ids of the columns for the losses over embeddings (SupCon, NT-Xent,
    /// Multi-Similarity); the class heads' columns are classes by position.
    pub ref_labels: &'a [u32],
    /// The columns row i may pair with (the losses over embeddings).
    pub window: Window,
}

/// Which columns of the losses over embeddings hold embeddings to pair with: those in the
/// ring window `start .. start + count` (mod R), never row i's own column
/// `(self_start + i) mod R` when `self_cols`. The batch against itself is
/// [`Window::batch`]; a cross-batch memory of R slots holding the current batch at
/// `self_start ..` is a window of what it has filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub self_cols: bool,
    pub self_start: usize,
    pub start: usize,
    pub count: usize,
}

impl Window {
    /// Every column, row i's own being column i: the batch against itself.
    pub fn batch(r: usize) -> Window {
        Window {
            self_cols: true,
            self_start: 0,
            start: 0,
            count: r,
        }
    }

    /// Every column, none a row's own: a reference set apart from the batch.
    pub fn all(r: usize) -> Window {
        Window {
            self_cols: false,
            ..Window::batch(r)
        }
    }

    /// The four u32 the shader's `window` binding holds.
    pub fn words(&self) -> [u32; 4] {
        [
            self.self_start as u32,
            self.start as u32,
            self.count as u32,
            self.self_cols as u32,
        ]
    }
}

impl<T: Real> Similarities<'_, T> {
    fn s(&self, i: usize, j: usize) -> T {
        T::one() - self.dm[i * self.r + j]
    }

    fn valid(&self, i: usize, j: usize) -> bool {
        let w = &self.window;
        let in_window = (j + self.r - w.start % self.r) % self.r < w.count;
        in_window && !(w.self_cols && j == (w.self_start + i) % self.r)
    }

    fn positive(&self, i: usize, j: usize) -> bool {
        self.valid(i, j) && self.ref_labels[j] == self.labels[i]
    }
}

/// `log(1 + Σ exp(x))`, shifted by `max(0, max x)`: pytorch-metric-learning's
/// `logsumexp(…, add_one=True)`, 0 over no terms.
fn log_one_plus_sum_exp<T: Real>(xs: impl Iterator<Item = T> + Clone) -> T {
    let m = xs.clone().fold(T::zero(), T::max);
    let mut sum = (-m).exp();
    for x in xs {
        sum += (x - m).exp();
    }
    m + sum.ln()
}

/// `log(1 + exp(x))` without overflow.
fn softplus<T: Real>(x: T) -> T {
    x.max(T::zero()) + (-x.abs()).exp().ln_1p()
}

/// `1 / (1 + exp(−x))` without overflow.
fn sigmoid<T: Real>(x: T) -> T {
    let e = (-x.abs()).exp();
    if x >= T::zero() {
        T::one() / (T::one() + e)
    } else {
        e / (T::one() + e)
    }
}

/// The target class's unscaled logit and its derivative in cos θ, from its cosine `c`.
/// ArcFace: `cos(θ + m) = c·cos m − sin θ·sin m` while `θ ≤ π − m` (`c ≥ −cos m`), else
/// `c − m·sin m`, which keeps the logit decreasing in θ (the paper's code and
/// pytorch-metric-learning's; θ from `c` clamped to [−1, 1]). CosFace: `c − m`.
pub fn target_logit<T: Real>(margin: MarginKind, c: T) -> (T, T) {
    match margin {
        MarginKind::Angular(m) => {
            let (cos_m, sin_m) = (T::from_f64((m as f64).cos()), T::from_f64((m as f64).sin()));
            if c >= -cos_m {
                let cc = c.min(T::one());
                let sin_t = (T::one() - cc * cc).max(T::zero()).sqrt();
                let f = cc * cos_m - sin_t * sin_m;
                (f, cos_m + sin_m * cc / sin_t.max(T::from_f64(MIN_SIN)))
            } else {
                (c - T::from_f64(m as f64) * sin_m, T::one())
            }
        }
        MarginKind::Cosine(m) => (c - T::from_f64(m as f64), T::one()),
    }
}

/// Row i's cosine to class c: the best of its K sub-center columns, and which (the lowest
/// index on a tie, as `torch.max`).
fn class_cos<T: Real>(m: &Similarities<T>, i: usize, c: usize, k: usize) -> (T, usize) {
    let mut best = (m.s(i, c * k), 0);
    for q in 1..k {
        let v = m.s(i, c * k + q);
        if v > best.0 {
            best = (v, q);
        }
    }
    best
}

/// The first pass: `[partial_rows, ROW]` partial sums (see [`ROW`]).
pub fn rows<T: Real>(loss: SimilarityLoss, m: &Similarities<T>) -> Vec<T> {
    let count = loss.partial_rows(m.n, m.r);
    let mut out = Vec::with_capacity(count * ROW);
    for row in 0..count {
        out.extend(match loss {
            SimilarityLoss::MarginSoftmax {
                margin,
                scale,
                sub_centers,
            } => margin_softmax_row(m, row, margin, T::from_f64(scale as f64), sub_centers),
            SimilarityLoss::ProxyAnchor { alpha, margin } => proxy_anchor_row(
                m,
                row,
                T::from_f64(alpha as f64),
                T::from_f64(margin as f64),
            ),
            SimilarityLoss::SupCon { temperature } => {
                supcon_row(m, row, T::from_f64(temperature as f64))
            }
            SimilarityLoss::NtXent { temperature } => {
                ntxent_row(m, row, T::from_f64(temperature as f64))
            }
            SimilarityLoss::MultiSimilarity {
                alpha,
                beta,
                base,
                epsilon,
            } => multi_similarity_row(
                m,
                row,
                [alpha, beta, base, epsilon].map(|v| T::from_f64(v as f64)),
            ),
        });
    }
    out
}

/// Row i: `lse(z) − z_y` with `z_c = s·cos_c`, the target's cosine replaced by its margin
/// logit. a = the target's cosine, b = 1 when the target is the nearest class.
fn margin_softmax_row<T: Real>(
    m: &Similarities<T>,
    i: usize,
    margin: MarginKind,
    scale: T,
    k: usize,
) -> [T; ROW] {
    let classes = m.r / k;
    let y = m.labels[i] as usize;
    let ct = class_cos(m, i, y, k).0;
    let (f, fp) = target_logit(margin, ct);
    let z = |c: usize| scale * if c == y { f } else { class_cos(m, i, c, k).0 };
    let zmax = (0..classes).map(z).fold(T::from_f64(NONE_BELOW), T::max);
    let mut sum = T::zero();
    for c in 0..classes {
        sum += (z(c) - zmax).exp();
    }
    let lse = zmax + sum.ln();
    let other = (0..classes)
        .filter(|&c| c != y)
        .map(|c| class_cos(m, i, c, k).0)
        .fold(T::from_f64(NONE_BELOW), T::max);
    let correct = if ct > other { T::one() } else { T::zero() };
    let o = T::zero();
    [lse - scale * f, T::one(), o, o, ct, correct, lse, f, fp, ct]
}

/// Proxy c (column c, down the batch): `log(1 + Σ_pos e^{−α(s−δ)})` over its class's
/// rows, counted when it has any, and `log(1 + Σ_neg e^{α(s+δ)})` over the others, every
/// proxy counted. a = Σ s over its positives, b = their count.
fn proxy_anchor_row<T: Real>(m: &Similarities<T>, c: usize, alpha: T, delta: T) -> [T; ROW] {
    let pos = |i: &usize| m.labels[*i] as usize == c;
    let pos_lse = log_one_plus_sum_exp((0..m.n).filter(pos).map(|i| -alpha * (m.s(i, c) - delta)));
    let neg_lse = log_one_plus_sum_exp(
        (0..m.n)
            .filter(|i| !pos(i))
            .map(|i| alpha * (m.s(i, c) + delta)),
    );
    let count = (0..m.n).filter(pos).count();
    let sum_s = (0..m.n).filter(pos).fold(T::zero(), |a, i| a + m.s(i, c));
    let has = if count > 0 { T::one() } else { T::zero() };
    let o = T::zero();
    [
        pos_lse,
        has,
        neg_lse,
        T::one(),
        sum_s,
        T::from_f64(count as f64),
        pos_lse,
        neg_lse,
        o,
        o,
    ]
}

/// Means of row i's similarities to its positives and to its negatives (0 where none).
fn mean_similarities<T: Real>(m: &Similarities<T>, i: usize) -> (T, T) {
    let (mut pos, mut neg, mut np, mut nn) = (T::zero(), T::zero(), 0usize, 0usize);
    for j in (0..m.r).filter(|&j| m.valid(i, j)) {
        if m.positive(i, j) {
            pos += m.s(i, j);
            np += 1;
        } else {
            neg += m.s(i, j);
            nn += 1;
        }
    }
    let mean = |sum: T, count: usize| {
        if count > 0 {
            sum / T::from_f64(count as f64)
        } else {
            T::zero()
        }
    };
    (mean(pos, np), mean(neg, nn))
}

/// Anchor i: `lse_j(t_j) − mean_{p}(t_p)`, t = s/τ over every other column, counted
/// (pytorch-metric-learning's AvgNonZeroReducer) when positive.
fn supcon_row<T: Real>(m: &Similarities<T>, i: usize, tau: T) -> [T; ROW] {
    let cols = || (0..m.r).filter(move |&j| m.valid(i, j));
    let tmax = cols()
        .map(|j| m.s(i, j) / tau)
        .fold(T::from_f64(NONE_BELOW), T::max);
    let mut sum = T::zero();
    for j in cols() {
        sum += (m.s(i, j) / tau - tmax).exp();
    }
    let lse = tmax + sum.ln();
    let (mut sum_pos, mut np) = (T::zero(), 0usize);
    for j in cols().filter(|&j| m.positive(i, j)) {
        sum_pos += m.s(i, j) / tau;
        np += 1;
    }
    let loss = if np > 0 {
        lse - sum_pos / T::from_f64(np as f64)
    } else {
        T::zero()
    };
    let counted = loss > T::zero();
    let (a, b) = mean_similarities(m, i);
    let o = T::zero();
    [
        if counted { loss } else { o },
        if counted { T::one() } else { o },
        o,
        o,
        a,
        b,
        lse,
        T::from_f64(np as f64),
        o,
        o,
    ]
}

/// Anchor i: `Σ_p softplus(NL − t_p)` over its positives, NL the log-sum-exp of its
/// negatives' t = s/τ: `−log(e^{t_p} / (e^{t_p} + Σ_n e^{t_n}))` per positive pair.
fn ntxent_row<T: Real>(m: &Similarities<T>, i: usize, tau: T) -> [T; ROW] {
    let neg = || (0..m.r).filter(move |&j| m.valid(i, j) && !m.positive(i, j));
    let nmax = neg()
        .map(|j| m.s(i, j) / tau)
        .fold(T::from_f64(NONE_BELOW), T::max);
    let nl = if neg().next().is_some() {
        let mut sum = T::zero();
        for j in neg() {
            sum += (m.s(i, j) / tau - nmax).exp();
        }
        nmax + sum.ln()
    } else {
        T::from_f64(NONE_BELOW)
    };
    let (mut loss, mut sig, mut np) = (T::zero(), T::zero(), 0usize);
    for j in (0..m.r).filter(|&j| m.positive(i, j)) {
        let u = nl - m.s(i, j) / tau;
        loss += softplus(u);
        sig += sigmoid(u);
        np += 1;
    }
    let (a, b) = mean_similarities(m, i);
    let o = T::zero();
    [loss, T::from_f64(np as f64), o, o, a, b, nl, sig, o, o]
}

/// Anchor i, on the pairs the miner keeps (positives with `s − ε <` the most similar
/// negative, negatives with `s + ε >` the least similar positive):
/// `(1/α)·log(1 + Σ e^{−α(s−λ)}) + (1/β)·log(1 + Σ e^{β(s−λ)})`.
fn multi_similarity_row<T: Real>(
    m: &Similarities<T>,
    i: usize,
    [alpha, beta, base, eps]: [T; 4],
) -> [T; ROW] {
    let (mp, mn) = hardest_similarities(m, i);
    let pos_lse = log_one_plus_sum_exp(
        (0..m.r)
            .filter(|&j| m.positive(i, j) && m.s(i, j) - eps < mn)
            .map(|j| -alpha * (m.s(i, j) - base)),
    );
    let neg_lse = log_one_plus_sum_exp(
        (0..m.r)
            .filter(|&j| m.valid(i, j) && !m.positive(i, j) && m.s(i, j) + eps > mp)
            .map(|j| beta * (m.s(i, j) - base)),
    );
    let (a, b) = mean_similarities(m, i);
    let o = T::zero();
    [
        pos_lse / alpha + neg_lse / beta,
        T::one(),
        o,
        o,
        a,
        b,
        mp,
        mn,
        pos_lse,
        neg_lse,
    ]
}

/// Row i's least similar positive and most similar negative (the "no value" bounds where
/// there is none).
fn hardest_similarities<T: Real>(m: &Similarities<T>, i: usize) -> (T, T) {
    let (mut mp, mut mn) = (T::from_f64(NONE_ABOVE), T::from_f64(NONE_BELOW));
    for j in (0..m.r).filter(|&j| m.valid(i, j)) {
        if m.positive(i, j) {
            mp = mp.min(m.s(i, j));
        } else {
            mn = mn.max(m.s(i, j));
        }
    }
    (mp, mn)
}

/// `memory_enqueue`: the batch's rows `batch [n, dim]` and `labels [n]` written into the ring
/// `memory [M, dim]`, `memory_labels [M]` at slots `(window.self_start + i) mod M`.
pub fn memory_enqueue<T: Copy>(
    batch: &[T],
    labels: &[u32],
    dim: usize,
    window: &Window,
    memory: &mut [T],
    memory_labels: &mut [u32],
) {
    let slots = memory_labels.len();
    for (i, row) in batch.chunks_exact(dim).enumerate() {
        let slot = (window.self_start + i) % slots;
        memory[slot * dim..(slot + 1) * dim].copy_from_slice(row);
        memory_labels[slot] = labels[i];
    }
}

/// The reduction: the loss `Σn0/Σd0 + Σn1/Σd1` (a term with a zero divisor is 0) and
/// `stats` = (Σd0, Σd1, Σa, Σb).
pub fn reduce<T: Real>(rows: &[T]) -> (T, [T; STATS]) {
    let mut sums = [T::zero(); 6];
    for row in rows.chunks_exact(ROW) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    let term = |n: T, d: T| if d > T::zero() { n / d } else { T::zero() };
    (
        term(sums[0], sums[1]) + term(sums[2], sums[3]),
        [sums[1], sums[3], sums[4], sums[5]],
    )
}

/// The loss and its stats: `rows` then `reduce`.
pub fn forward<T: Real>(loss: SimilarityLoss, m: &Similarities<T>) -> (T, [T; STATS]) {
    reduce(&rows(loss, m))
}

/// `ddm [n, r]` given the forward's `rows` and `stats` and the upstream `dloss`.
pub fn backward<T: Real>(
    loss: SimilarityLoss,
    m: &Similarities<T>,
    rows: &[T],
    stats: &[T; STATS],
    dloss: T,
) -> Vec<T> {
    let mut ddm = vec![T::zero(); m.n * m.r];
    for i in 0..m.n {
        for j in 0..m.r {
            ddm[i * m.r + j] = -dloss * ds(loss, m, rows, stats, i, j);
        }
    }
    ddm
}

/// `∂L/∂s_ij`.
fn ds<T: Real>(
    loss: SimilarityLoss,
    m: &Similarities<T>,
    rows: &[T],
    stats: &[T; STATS],
    i: usize,
    j: usize,
) -> T {
    let row = |r: usize| &rows[r * ROW..(r + 1) * ROW];
    let s = m.s(i, j);
    let f = |v: f32| T::from_f64(v as f64);
    match loss {
        SimilarityLoss::MarginSoftmax {
            scale, sub_centers, ..
        } => {
            let (c, q) = (j / sub_centers, j % sub_centers);
            let (cos_c, best) = class_cos(m, i, c, sub_centers);
            if q != best {
                return T::zero();
            }
            let r = row(i);
            let target = c == m.labels[i] as usize;
            let z = f(scale) * if target { r[7] } else { cos_c };
            let p = (z - r[6]).exp();
            let g = if target { p - T::one() } else { p } / stats[0];
            f(scale) * g * if target { r[8] } else { T::one() }
        }
        SimilarityLoss::ProxyAnchor { alpha, margin } => {
            let (alpha, delta) = (f(alpha), f(margin));
            let r = row(j);
            if m.labels[i] as usize == j {
                -alpha * (-alpha * (s - delta) - r[6]).exp() / stats[0]
            } else {
                alpha * (alpha * (s + delta) - r[7]).exp() / stats[1]
            }
        }
        SimilarityLoss::SupCon { temperature } => {
            let (tau, r) = (f(temperature), row(i));
            if !m.valid(i, j) || r[1] == T::zero() {
                return T::zero();
            }
            let p = (s / tau - r[6]).exp();
            let own = if m.positive(i, j) {
                T::one() / r[7]
            } else {
                T::zero()
            };
            (p - own) / tau / stats[0]
        }
        SimilarityLoss::NtXent { temperature } => {
            let (tau, r) = (f(temperature), row(i));
            if !m.valid(i, j) || stats[0] == T::zero() {
                T::zero()
            } else if m.positive(i, j) {
                -sigmoid(r[6] - s / tau) / tau / stats[0]
            } else {
                (s / tau - r[6]).exp() * r[7] / tau / stats[0]
            }
        }
        SimilarityLoss::MultiSimilarity {
            alpha,
            beta,
            base,
            epsilon,
        } => {
            let r = row(i);
            let (alpha, beta, base, eps) = (f(alpha), f(beta), f(base), f(epsilon));
            if !m.valid(i, j) {
                T::zero()
            } else if m.positive(i, j) {
                if s - eps < r[7] {
                    -(-alpha * (s - base) - r[8]).exp() / stats[0]
                } else {
                    T::zero()
                }
            } else if s + eps > r[6] {
                (beta * (s - base) - r[9]).exp() / stats[0]
            } else {
                T::zero()
            }
        }
    }
}
