//! Reference for `shaders/loss.wgsl`. Every input is `[B]`; a forward returns the batch mean,
//! a backward takes the upstream gradient `dloss` (the scalar the mean is multiplied by).

use super::Real;
use crate::vocab::{Distance, PairLabel};

fn batch<T: Real>(n: usize) -> T {
    T::from_f64(n as f64)
}

/// mean_i(same_i·d_i² + different_i·max(0, m − d_i)²)
pub fn contrastive_loss_forward<T: Real>(d: &[T], labels: &[PairLabel], margin: T) -> T {
    let mut sum = T::zero();
    for i in 0..d.len() {
        sum += match labels[i] {
            PairLabel::Same => d[i] * d[i],
            PairLabel::Different => {
                let h = (margin - d[i]).max(T::zero());
                h * h
            }
        };
    }
    sum / batch(d.len())
}

/// dd_i = dloss/B · (same: 2·d_i; different: −2·max(0, m − d_i))
pub fn contrastive_loss_backward<T: Real>(
    d: &[T],
    labels: &[PairLabel],
    margin: T,
    dloss: T,
) -> Vec<T> {
    let scale = dloss / batch(d.len());
    let two = T::from_f64(2.0);
    (0..d.len())
        .map(|i| {
            let g = match labels[i] {
                PairLabel::Same => two * d[i],
                PairLabel::Different => -(two * (margin - d[i]).max(T::zero())),
            };
            scale * g
        })
        .collect()
}

/// mean_i(max(0, d_ap_i − d_an_i + m)): the hinge of each triplet first, then the mean.
pub fn triplet_loss_forward<T: Real>(d_ap: &[T], d_an: &[T], margin: T) -> T {
    let mut sum = T::zero();
    for i in 0..d_ap.len() {
        sum += (d_ap[i] - d_an[i] + margin).max(T::zero());
    }
    sum / batch(d_ap.len())
}

/// (dd_ap, dd_an): ±dloss/B where d_ap_i − d_an_i + m > 0, else 0 (subgradient 0 at the kink).
pub fn triplet_loss_backward<T: Real>(
    d_ap: &[T],
    d_an: &[T],
    margin: T,
    dloss: T,
) -> (Vec<T>, Vec<T>) {
    let scale = dloss / batch(d_ap.len());
    let mut dd_ap = vec![T::zero(); d_ap.len()];
    let mut dd_an = vec![T::zero(); d_ap.len()];
    for i in 0..d_ap.len() {
        if d_ap[i] - d_an[i] + margin > T::zero() {
            dd_ap[i] = scale;
            dd_an[i] = -scale;
        }
    }
    (dd_ap, dd_an)
}

fn target<T: Real>(label: PairLabel) -> T {
    T::from_f64(label.target() as f64)
}

/// σ(z), exponentiating only −|z|.
fn sigmoid<T: Real>(z: T) -> T {
    let e = (-z.abs()).exp();
    if z >= T::zero() {
        T::one() / (T::one() + e)
    } else {
        e / (T::one() + e)
    }
}

/// mean_i(max(z_i, 0) − z_i·y_i + log(1 + exp(−|z_i|))), y = 1 for Same, 0 for Different.
pub fn bce_with_logits_forward<T: Real>(z: &[T], labels: &[PairLabel]) -> T {
    let mut sum = T::zero();
    for i in 0..z.len() {
        let y: T = target(labels[i]);
        sum += z[i].max(T::zero()) - z[i] * y + (-z[i].abs()).exp().ln_1p();
    }
    sum / batch(z.len())
}

/// dz_i = dloss/B · (σ(z_i) − y_i), with σ(z) − 1 taken as −σ(−z) to avoid cancellation.
pub fn bce_with_logits_backward<T: Real>(z: &[T], labels: &[PairLabel], dloss: T) -> Vec<T> {
    let scale = dloss / batch(z.len());
    (0..z.len())
        .map(|i| {
            let g = match labels[i] {
                PairLabel::Same => -sigmoid(-z[i]),
                PairLabel::Different => sigmoid(z[i]),
            };
            scale * g
        })
        .collect()
}

/// The `kind` distance (Euclidean or cosine: the fused entries') of paired rows.
fn fused_distance<T: Real>(kind: Distance, a: &[T], b: &[T], rows: usize, dim: usize) -> Vec<T> {
    match kind {
        Distance::Euclidean => super::distance::euclidean_forward(a, b, rows, dim),
        Distance::Cosine => super::distance::cosine_forward(a, b, rows, dim),
        other => panic!("the fused entries take the Euclidean or cosine distance, not {other:?}"),
    }
}

/// `(da, db)` of the `kind` distances `d` given their gradient `dd`.
fn fused_distance_backward<T: Real>(
    kind: Distance,
    a: &[T],
    b: &[T],
    d: &[T],
    dd: &[T],
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let rows = d.len();
    match kind {
        Distance::Euclidean => super::distance::euclidean_backward(a, b, d, dd, rows, dim),
        Distance::Cosine => super::distance::cosine_backward(a, b, dd, rows, dim),
        other => panic!("the fused entries take the Euclidean or cosine distance, not {other:?}"),
    }
}

/// `contrastive_euclidean_forward` / `contrastive_cosine_forward`: the `kind` distances of the
/// paired rows of `a`, `b` `[B, D]` and the contrastive loss of them: `(d, loss)`.
pub fn contrastive_fused_forward<T: Real>(
    kind: Distance,
    a: &[T],
    b: &[T],
    labels: &[PairLabel],
    dim: usize,
    margin: T,
) -> (Vec<T>, T) {
    let d = fused_distance(kind, a, b, labels.len(), dim);
    let loss = contrastive_loss_forward(&d, labels, margin);
    (d, loss)
}

/// `contrastive_euclidean_backward` / `contrastive_cosine_backward`: `(da, db)` of that loss
/// times `dloss`, given the forward's `d`.
#[allow(clippy::too_many_arguments)] // the references' inputs, each named
pub fn contrastive_fused_backward<T: Real>(
    kind: Distance,
    a: &[T],
    b: &[T],
    d: &[T],
    labels: &[PairLabel],
    dim: usize,
    margin: T,
    dloss: T,
) -> (Vec<T>, Vec<T>) {
    let dd = contrastive_loss_backward(d, labels, margin, dloss);
    fused_distance_backward(kind, a, b, d, &dd, dim)
}

/// `triplet_euclidean_forward` / `triplet_cosine_forward`: the `kind` distances of anchors `a`
/// to positives `p` and to negatives `n` (`[B, D]`), and the triplet loss of them:
/// `(d_ap, d_an, loss)`.
pub fn triplet_fused_forward<T: Real>(
    kind: Distance,
    a: &[T],
    p: &[T],
    n: &[T],
    dim: usize,
    margin: T,
) -> (Vec<T>, Vec<T>, T) {
    let rows = a.len() / dim;
    let d_ap = fused_distance(kind, a, p, rows, dim);
    let d_an = fused_distance(kind, a, n, rows, dim);
    let loss = triplet_loss_forward(&d_ap, &d_an, margin);
    (d_ap, d_an, loss)
}

/// `triplet_euclidean_backward` / `triplet_cosine_backward`: `(da, dp, dn)` of that loss times
/// `dloss`, the anchor's gradient the sum of its two distances'.
#[allow(clippy::too_many_arguments)] // the references' inputs, each named
pub fn triplet_fused_backward<T: Real>(
    kind: Distance,
    a: &[T],
    p: &[T],
    n: &[T],
    d_ap: &[T],
    d_an: &[T],
    dim: usize,
    margin: T,
    dloss: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (dd_ap, dd_an) = triplet_loss_backward(d_ap, d_an, margin, dloss);
    let (mut da, dp) = fused_distance_backward(kind, a, p, d_ap, &dd_ap, dim);
    let (da2, dn) = fused_distance_backward(kind, a, n, d_an, &dd_an, dim);
    for (x, y) in da.iter_mut().zip(da2) {
        *x += y;
    }
    (da, dp, dn)
}
