//! n-way one-shot accuracy, the protocol of Koch, Zemel & Salakhutdinov 2015 ("Siamese Neural
//! Networks for One-shot Image Recognition"): an episode draws n distinct classes, one
//! support image of each, and one query image of one of those classes (a different image
//! from that class's support); the query is assigned the class of its nearest support under
//! the model's metric. Accuracy is the fraction of seeded episodes assigned correctly, with
//! a Wilson 95% interval (chance is 1/n).
//!
//! Embeddings are computed once (on the GPU, by `eval::embed`); an episode is n distances
//! of D values, so the episodes run on the host. Distances follow the definitions of
//! `cpu::distance` (Euclidean with its 1e-12 inside the square root, cosine with norms
//! clamped at 1e-8), in f64. On an exact tie the support drawn earlier wins; supports are
//! drawn in random order, so ties favour no class.
//!
//! A class can be the query's only if it has two images, so only classes with at least two
//! are drawn; when fewer than n such classes exist the result is an error that says so —
//! n is never lowered silently.

use std::fmt;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::cpu::distance::{COSINE_EPS, EUCLIDEAN_EPS};
use crate::vocab::PairwiseMetric;

/// Episodes per evaluation by default.
pub const DEFAULT_EPISODES: usize = 1000;
/// Seed of the episodes by default: every run is scored on the same episodes.
pub const DEFAULT_SEED: u64 = 2015;
/// The n of the usual report.
pub const DEFAULT_WAYS: [usize; 2] = [5, 10];

/// z of a two-sided 95% normal interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The accuracy of n-way one-shot episodes.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShot {
    /// Ways: classes per episode.
    pub n: usize,
    pub episodes: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Wilson score 95% interval of the accuracy.
    pub ci95: (f64, f64),
    pub metric: PairwiseMetric,
    pub seed: u64,
}

impl fmt::Display for OneShot {
    /// `10-way one-shot accuracy 0.7420 (95% CI 0.7138–0.7683, 1000 episodes; chance 0.1000)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-way one-shot accuracy {:.4} (95% CI {:.4}–{:.4}, {} episodes; chance {:.4})",
            self.n,
            self.accuracy,
            self.ci95.0,
            self.ci95.1,
            self.episodes,
            1.0 / self.n as f64
        )
    }
}

/// Why there is no one-shot figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneShotError {
    /// The split has fewer than `n` classes with at least two images.
    TooFewClasses { n: usize, eligible: usize },
    /// The inputs do not fit together (lengths, n < 2, no episodes, non-finite values).
    Input(String),
}

impl fmt::Display for OneShotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OneShotError::TooFewClasses { n, eligible } => write!(
                f,
                "{n}-way one-shot needs {n} classes with at least two images each; this split \
                 has {eligible}"
            ),
            OneShotError::Input(msg) => write!(f, "one-shot: {msg}"),
        }
    }
}

impl std::error::Error for OneShotError {}

/// Wilson score interval of `correct` successes in `trials`, at normal quantile `z`.
pub fn wilson_interval(correct: usize, trials: usize, z: f64) -> (f64, f64) {
    let t = trials as f64;
    let p = correct as f64 / t;
    let z2 = z * z;
    let denom = 1.0 + z2 / t;
    let center = (p + z2 / (2.0 * t)) / denom;
    let half = z / denom * (p * (1.0 - p) / t + z2 / (4.0 * t * t)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// The metric's distance between two embeddings, in f64.
fn distance(metric: PairwiseMetric, a: &[f32], b: &[f32]) -> f64 {
    match metric {
        PairwiseMetric::Euclidean => {
            let s: f64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum();
            (s + EUCLIDEAN_EPS).sqrt()
        }
        PairwiseMetric::Cosine => {
            let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let norm = |v: &[f32]| {
                v.iter()
                    .map(|&x| (x as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(COSINE_EPS)
            };
            1.0 - dot / (norm(a) * norm(b))
        }
    }
}

/// n-way one-shot accuracy over `episodes` seeded episodes of `embeddings [N, dim]`
/// (row-major) with `labels`.
pub fn one_shot(
    embeddings: &[f32],
    labels: &[u8],
    dim: usize,
    metric: PairwiseMetric,
    n: usize,
    episodes: usize,
    seed: u64,
) -> Result<OneShot, OneShotError> {
    check_inputs(embeddings, labels, dim, n, episodes)?;
    let by_class = images_by_class(labels);
    let mut eligible: Vec<usize> = (0..256).filter(|&c| by_class[c].len() >= 2).collect();
    if eligible.len() < n {
        return Err(OneShotError::TooFewClasses {
            n,
            eligible: eligible.len(),
        });
    }
    let row = |i: u32| &embeddings[i as usize * dim..(i as usize + 1) * dim];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut correct = 0;
    for _ in 0..episodes {
        let episode = Episode::draw(&mut rng, &mut eligible, &by_class, n);
        let query = row(episode.query);
        let guess = nearest(metric, query, episode.supports.iter().map(|&s| row(s)));
        correct += usize::from(guess == episode.truth);
    }
    Ok(OneShot {
        n,
        episodes,
        correct,
        accuracy: correct as f64 / episodes as f64,
        ci95: wilson_interval(correct, episodes, Z95),
        metric,
        seed,
    })
}

/// Inputs that cannot make episodes: lengths that disagree, n < 2, no episodes, or a
/// non-finite embedding (a diverged model, whose distances would rank nothing).
fn check_inputs(
    embeddings: &[f32],
    labels: &[u8],
    dim: usize,
    n: usize,
    episodes: usize,
) -> Result<(), OneShotError> {
    if dim == 0 || embeddings.len() != labels.len() * dim {
        return Err(OneShotError::Input(format!(
            "{} labels need {}×{dim} embedding values, got {}",
            labels.len(),
            labels.len(),
            embeddings.len()
        )));
    }
    if n < 2 || episodes == 0 {
        return Err(OneShotError::Input(format!(
            "n = {n} and episodes = {episodes}: an episode needs n ≥ 2 classes, and at least \
             one episode"
        )));
    }
    if embeddings.iter().any(|v| !v.is_finite()) {
        return Err(OneShotError::Input(
            "an embedding value is not finite (NaN or infinite): the model has diverged".into(),
        ));
    }
    Ok(())
}

/// The images of each of the 256 possible labels, in dataset order.
fn images_by_class(labels: &[u8]) -> Vec<Vec<u32>> {
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); 256];
    for (i, &c) in labels.iter().enumerate() {
        by_class[c as usize].push(i as u32);
    }
    by_class
}

/// One episode: a support image of each of its n classes, in the order drawn, the place of
/// the query's class among them, and the query image.
struct Episode {
    supports: Vec<u32>,
    truth: usize,
    query: u32,
}

impl Episode {
    /// Draws an episode from the classes in `eligible` (each with at least two images in
    /// `by_class`). The seed fixes the results only with the draws in this order: the n
    /// classes, the query's class, each class's support, then the query.
    fn draw(rng: &mut StdRng, eligible: &mut [usize], by_class: &[Vec<u32>], n: usize) -> Self {
        // Partial Fisher–Yates: the first n of `eligible` are the episode's classes.
        for i in 0..n {
            let j = rng.random_range(i..eligible.len());
            eligible.swap(i, j);
        }
        let truth = rng.random_range(0..n);
        let supports: Vec<u32> = eligible[..n]
            .iter()
            .map(|&c| by_class[c][rng.random_range(0..by_class[c].len())])
            .collect();
        let members = &by_class[eligible[truth]];
        // Any member but the support: draw among the others.
        let support_at = members
            .iter()
            .position(|&m| m == supports[truth])
            .expect("the support is a member of its class");
        let mut q = rng.random_range(0..members.len() - 1);
        if q >= support_at {
            q += 1;
        }
        Episode {
            supports,
            truth,
            query: members[q],
        }
    }
}

/// The place of the support nearest to `query` under `metric`; on an exact tie the earlier
/// one (strictly nearer is needed to take over).
fn nearest<'a>(
    metric: PairwiseMetric,
    query: &[f32],
    supports: impl Iterator<Item = &'a [f32]>,
) -> usize {
    let mut best = (f64::INFINITY, usize::MAX);
    for (s, support) in supports.enumerate() {
        let d = distance(metric, query, support);
        if d < best.0 {
            best = (d, s);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a line, 2 per class, class c at 10·c and 10·c + 1: every query's own-class
    /// support is 1 away and every other at least 9, so every episode is right.
    fn separated(classes: usize) -> (Vec<f32>, Vec<u8>) {
        let mut e = Vec::new();
        let mut l = Vec::new();
        for c in 0..classes {
            e.extend([10.0 * c as f32, 10.0 * c as f32 + 1.0]);
            l.extend([c as u8, c as u8]);
        }
        (e, l)
    }

    #[test]
    fn separated_classes_are_always_right_and_identical_points_are_at_chance() {
        let (e, l) = separated(12);
        for n in DEFAULT_WAYS {
            let r = one_shot(&e, &l, 1, PairwiseMetric::Euclidean, n, 500, 1).unwrap();
            assert_eq!((r.correct, r.accuracy), (500, 1.0), "{n}-way");
            assert!(
                r.ci95.0 > 0.99 && (r.ci95.1 - 1.0).abs() < 1e-12,
                "{:?}",
                r.ci95
            );
        }
        // All embeddings equal: every distance ties and the earliest-drawn support wins,
        // which is the query's class with probability 1/n.
        let zeros = vec![0.0; l.len()];
        let r = one_shot(&zeros, &l, 1, PairwiseMetric::Euclidean, 5, 4000, 2).unwrap();
        assert!(
            r.ci95.0 < 0.2 && 0.2 < r.ci95.1,
            "accuracy {} with interval {:?}, chance 0.2",
            r.accuracy,
            r.ci95
        );
    }

    #[test]
    fn a_hand_built_episode_set_scores_as_computed() {
        // Class 0 at {0, 1}; class 1 at {0.4, 5}. Two-way episodes: the query class is drawn,
        // then each class's support. Cases (query class 0 or 1, supports, query):
        //   class 0, supports (s0, s1), query the other class-0 point q0:
        //     s0=0, q0=1: d(1,0)=1 vs d(1,s1): s1=0.4 → 0.6 (wrong), s1=5 → 4 (right)
        //     s0=1, q0=0: d(0,1)=1 vs s1=0.4 → 0.4 (wrong), s1=5 → 5 (right)
        //   class 1: s1=0.4, q=5: d=4.6 vs s0=0 → 5, s0=1 → 4 (wrong, right? 4 < 4.6: wrong)
        //            s1=5, q=0.4: d=4.6 vs s0=0 → 0.4 (wrong), s0=1 → 0.6 (wrong)
        // Right in 3 of the 8 equally likely cases: (class 0, s1=5) twice, (class 1, s1=0.4,
        // s0=0) once → expected accuracy 3/8.
        let e = [0.0, 1.0, 0.4, 5.0];
        let l = [0, 0, 1, 1];
        let r = one_shot(&e, &l, 1, PairwiseMetric::Euclidean, 2, 20_000, 3).unwrap();
        assert!(
            (r.accuracy - 0.375).abs() < 0.015,
            "accuracy {}, expected 3/8 (±0.015 is over 4 standard errors of 20,000 episodes)",
            r.accuracy
        );
    }

    #[test]
    fn cosine_ignores_the_length_that_euclidean_sees() {
        // Class 0 along x, class 1 along y; one class-0 image is far out on x. Euclidean
        // sends the far one to whichever support is nearer in length; cosine never errs.
        let e = [1.0, 0.0, 50.0, 0.0, 0.0, 1.0, 0.0, 2.0];
        let l = [0, 0, 1, 1];
        let cos = one_shot(&e, &l, 2, PairwiseMetric::Cosine, 2, 200, 4).unwrap();
        assert_eq!(cos.accuracy, 1.0);
        let euc = one_shot(&e, &l, 2, PairwiseMetric::Euclidean, 2, 200, 4).unwrap();
        assert!(euc.accuracy < 0.9, "euclidean accuracy {}", euc.accuracy);
    }

    #[test]
    fn too_few_classes_is_reported_not_shrunk() {
        let (e, mut l) = separated(6);
        assert_eq!(
            one_shot(&e, &l, 1, PairwiseMetric::Euclidean, 10, 100, 0),
            Err(OneShotError::TooFewClasses { n: 10, eligible: 6 })
        );
        // A class with a single image cannot hold a support and a query.
        l[11] = 200;
        assert_eq!(
            one_shot(&e, &l, 1, PairwiseMetric::Euclidean, 6, 100, 0),
            Err(OneShotError::TooFewClasses { n: 6, eligible: 5 })
        );
        assert!(matches!(
            one_shot(&e[..5], &l, 1, PairwiseMetric::Euclidean, 2, 100, 0),
            Err(OneShotError::Input(_))
        ));
    }

    #[test]
    fn episodes_are_seeded() {
        let e: Vec<f32> = (0..200).map(|i| ((i * 37) % 101) as f32).collect();
        let l: Vec<u8> = (0..100).map(|i| (i % 10) as u8).collect();
        let run = |seed| one_shot(&e, &l, 2, PairwiseMetric::Euclidean, 5, 300, seed).unwrap();
        assert_eq!(run(9), run(9));
    }

    #[test]
    fn wilson_interval_matches_published_values() {
        // Wilson (1927) / Newcombe (1998) example: 81 of 263 → 0.2553 to 0.3662.
        let (lo, hi) = wilson_interval(81, 263, Z95);
        assert!(
            (lo - 0.2553).abs() < 5e-5 && (hi - 0.3662).abs() < 5e-5,
            "{lo} {hi}"
        );
        // All correct: the upper end is 1 (to rounding), the lower 1/(1 + z²/n).
        let (lo, hi) = wilson_interval(10, 10, Z95);
        assert!((hi - 1.0).abs() < 1e-12 && (lo - 1.0 / (1.0 + Z95 * Z95 / 10.0)).abs() < 1e-12);
    }
}
