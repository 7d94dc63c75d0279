//! The shape of a cloud of embeddings: how spread it is, along how many directions, and its
//! 2-D principal-component projection. The doctor reads collapse from these; the report plots
//! the projection. Host code over embeddings already read back (`[N, D]`, D ≈ 128): the
//! covariance is O(N·D²) and its eigen-decomposition O(D³), both small beside embedding N
//! images on the GPU.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Summary statistics of `N` embeddings of dimension `D`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingStats {
    pub count: usize,
    pub dim: usize,
    /// Mean Euclidean distance between two different embeddings (over seeded random pairs).
    pub mean_pairwise_distance: f64,
    /// Mean Euclidean norm of an embedding.
    pub mean_norm: f64,
    /// Variance of each dimension.
    pub dim_variance: Vec<f64>,
    /// Effective rank (Roy & Vetterli 2007): `exp(H(p))` with `p` the singular values of the
    /// centred embeddings normalised to sum 1. 1 for points on a line, `D` for an isotropic
    /// cloud; 0 when every embedding is the same point.
    pub effective_rank: f64,
    /// Covariance eigenvalues, largest first.
    pub eigenvalues: Vec<f64>,
}

impl EmbeddingStats {
    /// Share of the dimensions whose variance is below 1e-6 of the largest one (or all of
    /// them when nothing varies).
    pub fn flat_dims(&self) -> f64 {
        let top = self.dim_variance.iter().cloned().fold(0.0, f64::max);
        let flat = self
            .dim_variance
            .iter()
            .filter(|&&v| v <= 1e-6 * top || top == 0.0)
            .count();
        flat as f64 / self.dim.max(1) as f64
    }
}

/// Pairs drawn for the mean pairwise distance: its standard error is then well under 1%.
const DISTANCE_PAIRS: usize = 20_000;

/// The statistics of `e` (`[count, dim]`, row-major). Panics if `e.len() != count·dim`.
pub fn embedding_stats(e: &[f32], count: usize, dim: usize, seed: u64) -> EmbeddingStats {
    assert_eq!(e.len(), count * dim, "embeddings are [count, dim]");
    let (_, cov) = covariance(e, count, dim);
    let (eigenvalues, _) = symmetric_eigen(&cov, dim);
    let row = |i: usize| &e[i * dim..(i + 1) * dim];
    let mean_norm = (0..count)
        .map(|i| {
            row(i)
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / count.max(1) as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = 0.0;
    let mut pairs = 0usize;
    if count >= 2 {
        for _ in 0..DISTANCE_PAIRS {
            let i = rng.random_range(0..count);
            let mut j = rng.random_range(0..count - 1);
            if j >= i {
                j += 1;
            }
            total += row(i)
                .iter()
                .zip(row(j))
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            pairs += 1;
        }
    }
    EmbeddingStats {
        count,
        dim,
        mean_pairwise_distance: total / pairs.max(1) as f64,
        mean_norm,
        dim_variance: (0..dim).map(|k| cov[k * dim + k]).collect(),
        effective_rank: effective_rank(&eigenvalues),
        eigenvalues,
    }
}

/// `exp` of the entropy of the singular values (square roots of the covariance eigenvalues)
/// normalised to sum 1; 0 when they are all 0.
pub fn effective_rank(eigenvalues: &[f64]) -> f64 {
    let sigma: Vec<f64> = eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let sum: f64 = sigma.iter().sum();
    if sum <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = sigma
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|&s| {
            let p = s / sum;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

/// Column means and the (population) covariance `[dim, dim]` of `e`, in f64.
fn covariance(e: &[f32], count: usize, dim: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0.0f64; dim];
    for row in e.chunks_exact(dim) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= count.max(1) as f64);
    let mut cov = vec![0.0f64; dim * dim];
    let mut centred = vec![0.0f64; dim];
    for row in e.chunks_exact(dim) {
        for ((c, &x), m) in centred.iter_mut().zip(row).zip(&mean) {
            *c = x as f64 - m;
        }
        // Upper triangle only; mirrored below.
        for a in 0..dim {
            let ca = centred[a];
            for b in a..dim {
                cov[a * dim + b] += ca * centred[b];
            }
        }
    }
    for a in 0..dim {
        for b in a..dim {
            let v = cov[a * dim + b] / count.max(1) as f64;
            cov[a * dim + b] = v;
            cov[b * dim + a] = v;
        }
    }
    (mean, cov)
}

/// Eigenvalues (descending) and unit eigenvectors (`vectors[k]` belongs to `values[k]`) of the
/// symmetric `[n, n]` matrix `m`, by cyclic Jacobi rotations: simple, and accurate to
/// rounding for the small matrices (n ≤ a few hundred) it meets here.
pub fn symmetric_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut a = m.to_vec();
    let mut v = vec![0.0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|p| (p + 1..n).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q].powi(2))
            .sum();
        let scale: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum::<f64>();
        if off <= 1e-30 * scale.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order
        .iter()
        .map(|&i| (0..n).map(|k| v[k * n + i]).collect())
        .collect();
    (values, vectors)
}

/// The projection of every row of `e` on its first two principal components (`[count, 2]`
/// as pairs), and the share of the variance they explain.
pub fn pca_2d(e: &[f32], count: usize, dim: usize) -> (Vec<[f32; 2]>, f64) {
    let (mean, cov) = covariance(e, count, dim);
    let (values, vectors) = symmetric_eigen(&cov, dim);
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    let explained = if total > 0.0 {
        values.iter().take(2).map(|v| v.max(0.0)).sum::<f64>() / total
    } else {
        0.0
    };
    let axis = |k: usize| vectors.get(k).cloned().unwrap_or_else(|| vec![0.0; dim]);
    let (u, w) = (axis(0), axis(1));
    let points = e
        .chunks_exact(dim)
        .map(|row| {
            let dot = |ax: &[f64]| {
                row.iter()
                    .zip(&mean)
                    .zip(ax)
                    .map(|((&x, m), a)| (x as f64 - m) * a)
                    .sum::<f64>() as f32
            };
            [dot(&u), dot(&w)]
        })
        .collect();
    (points, explained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1, eigenvectors (1, 1)/√2 and (1, −1)/√2.
        let (values, vectors) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((values[0] - 3.0).abs() < 1e-12 && (values[1] - 1.0).abs() < 1e-12);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vectors[0][0].abs() - r).abs() < 1e-12);
        assert!((vectors[0][0] - vectors[0][1]).abs() < 1e-12);
        assert!((vectors[1][0] + vectors[1][1]).abs() < 1e-12);
    }

    #[test]
    fn effective_rank_of_lines_planes_and_points() {
        // Points on a line: one non-zero singular value → rank 1.
        let line: Vec<f32> = (0..50)
            .flat_map(|i| [i as f32, 2.0 * i as f32, 0.0])
            .collect();
        let s = embedding_stats(&line, 50, 3, 0);
        assert!(
            (s.effective_rank - 1.0).abs() < 1e-6,
            "{}",
            s.effective_rank
        );
        // The four corners of a square: two equal singular values → rank exactly 2.
        let square = [1.0f32, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0];
        let s = embedding_stats(&square, 4, 2, 0);
        assert!(
            (s.effective_rank - 2.0).abs() < 1e-9,
            "{}",
            s.effective_rank
        );
        assert_eq!(s.dim_variance, vec![1.0, 1.0]);
        // Every pair of distinct corners is 2 or 2√2 apart: 4 of the 6 pairs at 2, 2 at 2√2.
        let expected = (4.0 * 2.0 + 2.0 * 8f64.sqrt()) / 6.0;
        assert!((s.mean_pairwise_distance - expected).abs() < 0.02);
        assert!((s.mean_norm - 2f64.sqrt()).abs() < 1e-6);
        // One point repeated: nothing varies.
        let s = embedding_stats(&[0.5f32; 30], 10, 3, 0);
        assert_eq!(s.effective_rank, 0.0);
        assert_eq!(s.mean_pairwise_distance, 0.0);
        assert_eq!(s.flat_dims(), 1.0);
    }

    #[test]
    fn pca_finds_the_long_axis() {
        // A cloud stretched along (1, 1, 0): the first component carries nearly all of it.
        let e: Vec<f32> = (0..40)
            .flat_map(|i| {
                let t = i as f32 - 20.0;
                let wobble = if i % 2 == 0 { 0.1 } else { -0.1 };
                [t + wobble, t - wobble, 0.0]
            })
            .collect();
        let (points, explained) = pca_2d(&e, 40, 3);
        assert!(explained > 0.9999, "{explained}");
        // Along the axis the projections are (t − mean t)·√2 up to sign; the mean of t is −0.5.
        let first = points[0][0].abs();
        assert!((first - 19.5 * 2f32.sqrt()).abs() < 1e-3, "{first}");
    }
}
