//! Rules on the losses over cosine similarities (ArcFace, CosFace, Sub-center ArcFace,
//! ProxyAnchor, SupCon, NT-Xent, Multi-Similarity): the troubles their users bring —
//! a margin no angle can meet (`margin_too_large`), a scale too small for any class to win
//! the softmax (`scale_too_small`), a temperature so low that a few negatives take the
//! whole gradient (`temperature_too_low`), class weights or proxies that collapsed onto
//! each other (`class_centers_collapsed`), and a cross-batch memory whose embeddings the
//! tower has moved away from (`xbm_stale`).

use std::f64::consts::FRAC_PI_2;

use super::{Evidence, Finding, Severity, finding};
use crate::vocab::{MarginKind, SimilarityLoss};

/// The probability the target class should be able to reach: below it the softmax cannot
/// tell a well-separated embedding from a mediocre one (Wang et al. 2018, CosFace §3.4, and
/// NormFace: with C classes, a normalised softmax reaches p only when
/// s ≥ (C−1)/C·ln((C−1)·p/(1−p))).
const TARGET_P: f64 = 0.9;
/// Below this temperature SupCon and NT-Xent train unstably (Khosla et al. 2020, §4: "extremely
/// low temperatures are harder to train"; their best was 0.1, SimCLR's 0.1–0.5), and the
/// softmax weight of a negative 0.1 more similar than another is e^{0.1/τ} ≥ 7.4 times its:
/// the few hardest negatives of the batch take the whole gradient.
const MIN_TEMPERATURE: f64 = 0.05;
/// Two classes whose weight rows (or proxies) point this close together — an angle under
/// 26° — give the softmax (or the proxies' anchors) nothing to tell them apart by; trained
/// heads keep their classes' directions far wider apart (Fashion-MNIST's ten: cosines ≤ 0.5).
const COLLAPSED_COS: f64 = 0.9;

/// Below this mean cosine between what a cross-batch memory holds for its images and what
/// the tower now embeds them as (an angle over 26°, as wide as trained classes sit apart:
/// see `COLLAPSED_COS`), the memory's pairs compare the batch with positions the images no
/// longer have: Wang et al. 2020 (§3) rely on the "slow drift" of features, and start the
/// memory only once it holds.
const STALE_COS: f64 = 0.9;

/// How far a cross-batch memory's embeddings are from the trained tower's: the mean cosine,
/// over its filled slots, between the stored embedding of an image and its embedding now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryDrift {
    pub mean_cos: f64,
    /// Filled slots, and the training steps they span.
    pub slots: usize,
    pub steps: usize,
}

impl MemoryDrift {
    /// The drift of `stored` against `fresh` (`[n, dim]` each, the same images in order),
    /// for a memory filled by batches of `batch`; None when empty.
    pub fn of(stored: &[f32], fresh: &[f32], dim: usize, batch: usize) -> Option<MemoryDrift> {
        let slots = stored.len() / dim;
        if slots == 0 || fresh.len() != stored.len() {
            return None;
        }
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            dot / (norm(a) * norm(b)).max(1e-12)
        };
        let total: f64 = stored
            .chunks_exact(dim)
            .zip(fresh.chunks_exact(dim))
            .map(|(a, b)| cos(a, b))
            .sum();
        Some(MemoryDrift {
            mean_cos: total / slots as f64,
            slots,
            steps: slots.div_ceil(batch.max(1)),
        })
    }
}

/// How spread the learned class directions are: the largest cosine between two classes'
/// weight rows (the closest pair of their sub-centers) and which classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CenterSpread {
    pub max_cos: f64,
    pub classes: (usize, usize),
}

impl CenterSpread {
    /// The spread of `weights [C·K, D]` (class c's K sub-centers in rows c·K..c·K + K);
    /// None for fewer than two classes.
    pub fn of(weights: &[f32], dim: usize, sub_centers: usize) -> Option<CenterSpread> {
        let rows = weights.len() / dim;
        let classes = rows / sub_centers.max(1);
        if classes < 2 {
            return None;
        }
        let unit: Vec<Vec<f64>> = weights
            .chunks_exact(dim)
            .map(|r| {
                let n = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                r.iter().map(|&v| v as f64 / n.max(1e-12)).collect()
            })
            .collect();
        let cos =
            |i: usize, j: usize| -> f64 { unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum() };
        let mut best = CenterSpread {
            max_cos: f64::NEG_INFINITY,
            classes: (0, 1),
        };
        for c in 0..classes {
            for d in c + 1..classes {
                for i in c * sub_centers..(c + 1) * sub_centers {
                    for j in d * sub_centers..(d + 1) * sub_centers {
                        let v = cos(i, j);
                        if v > best.max_cos {
                            best = CenterSpread {
                                max_cos: v,
                                classes: (c, d),
                            };
                        }
                    }
                }
            }
        }
        Some(best)
    }
}

pub(super) fn class_losses(e: &Evidence, out: &mut Vec<Finding>) {
    let Some(loss) = e.similarity else { return };
    match loss {
        SimilarityLoss::MarginSoftmax { margin, scale, .. } => {
            if let Some(f) = unmeetable_margin(margin) {
                out.push(f);
            }
            if let Some(f) = small_scale(scale as f64, e.classes) {
                out.push(f);
            }
        }
        SimilarityLoss::SupCon { temperature } | SimilarityLoss::NtXent { temperature } => {
            if let Some(f) = low_temperature(temperature as f64, e.batch_images) {
                out.push(f);
            }
        }
        SimilarityLoss::ProxyAnchor { .. } | SimilarityLoss::MultiSimilarity { .. } => {}
    }
    if let Some(drift) = e.memory_drift
        && drift.mean_cos < STALE_COS
    {
        out.push(finding(
            "xbm_stale",
            Severity::Warn,
            format!(
                "the cross-batch memory's {} embeddings, written over the last {} steps, are \
                 stale: the tower now embeds the same images at a mean cosine of {:.3} to what \
                 the memory holds (an angle of {:.0}°), so the loss compares each batch with \
                 positions its negatives and positives no longer have",
                drift.slots,
                drift.steps,
                drift.mean_cos,
                drift.mean_cos.clamp(-1.0, 1.0).acos().to_degrees()
            ),
            "Use a smaller --xbm (a memory spanning fewer steps), start it later with \
             --xbm-warmup (once the loss has settled), or lower the learning rate.",
        ));
    }
    if let Some(spread) = e.class_centers
        && spread.max_cos > COLLAPSED_COS
    {
        out.push(finding(
            "class_centers_collapsed",
            Severity::Fail,
            format!(
                "the learned directions of classes {} and {} (label ids) have cosine {:.3} (an \
                 angle of {:.0}°): the class weights or proxies collapsed together, so the loss \
                 cannot pull those classes' embeddings apart",
                spread.classes.0,
                spread.classes.1,
                spread.max_cos,
                spread.max_cos.clamp(-1.0, 1.0).acos().to_degrees()
            ),
            "Give the head its own, higher learning rate (--head-lr, e.g. 10× --lr) so that it \
             moves with the tower; check the head was not frozen or loaded identical for every \
             class; with ProxyAnchor keep α ≈ 32 and δ ≈ 0.1.",
        ));
    }
}

/// ArcFace's m ≥ π/2 makes cos(θ + m) ≤ 0 for every angle the target can have, and CosFace's
/// m ≥ 1 puts cos θ − m ≤ 0 even for a perfectly aligned embedding: the target never wins
/// the softmax against a class at a positive cosine.
fn unmeetable_margin(margin: MarginKind) -> Option<Finding> {
    let (m, limit, form) = match margin {
        MarginKind::Angular(m) => (m as f64, FRAC_PI_2, "cos(θ + m)"),
        MarginKind::Cosine(m) => (m as f64, 1.0, "cos θ − m"),
    };
    (m >= limit).then(|| {
        finding(
            "margin_too_large",
            Severity::Fail,
            format!(
                "the margin m = {m} is at least {limit:.4}: the target's logit {form} is at most 0 \
                 whatever the angle, so the right class cannot outscore a wrong one at a positive \
                 cosine and the loss stays high"
            ),
            "Use ArcFace's m = 0.5 (radians; m must stay below π/2 ≈ 1.571) or CosFace's \
             m = 0.35 (below 1).",
        )
    })
}

/// The most the target class can get from a softmax of scale s over C classes when the
/// embeddings are perfectly separated (the classes' directions a regular simplex: cosine 1
/// to its own, −1/(C − 1) to the others).
fn best_probability(scale: f64, classes: usize) -> f64 {
    let others = (classes.max(2) - 1) as f64;
    1.0 / (1.0 + others * (-scale - scale / others).exp())
}

fn small_scale(scale: f64, classes: usize) -> Option<Finding> {
    if classes < 2 {
        return None;
    }
    let best = best_probability(scale, classes);
    (best < TARGET_P).then(|| {
        let c = classes as f64;
        let needed = (c - 1.0) / c * ((c - 1.0) * TARGET_P / (1.0 - TARGET_P)).ln();
        finding(
            "scale_too_small",
            Severity::Warn,
            format!(
                "with scale s = {scale} over {classes} classes the softmax gives the right class at \
                 most p = {best:.3}, even for perfectly separated embeddings: the loss keeps pulling \
                 on solved examples and cannot rank a good embedding above a mediocre one"
            ),
            &format!(
                "Raise --scale to at least {needed:.1} (reaching p = {TARGET_P}); 30–64 is usual \
                 (ArcFace and CosFace use 64). If a large scale made the loss NaN in another \
                 framework, that was half precision overflowing: here the loss runs in f32."
            ),
        )
    })
}

fn low_temperature(tau: f64, batch: usize) -> Option<Finding> {
    (tau < MIN_TEMPERATURE).then(|| {
        finding(
            "temperature_too_low",
            Severity::Warn,
            format!(
                "the temperature τ = {tau} is below {MIN_TEMPERATURE}: a negative 0.1 more similar \
                 than another weighs e^{{0.1/τ}} = {:.0} times as much, so of the {} other images \
                 of a batch the hardest one or two take the whole gradient and training is \
                 noisy and unstable",
                (0.1 / tau).exp(),
                batch.saturating_sub(1)
            ),
            "Use τ = 0.1 (SupCon's and SimCLR's choice; 0.07 is NT-Xent's default); lower it only \
             with large batches.",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_probability_follows_its_closed_form() {
        // Two classes at cosines 1 and −1: p = 1/(1 + e^{−2s}).
        assert!((best_probability(1.0, 2) - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-12);
        // The scale the finding asks for reaches p = 0.9 exactly.
        let c = 10.0f64;
        let needed = (c - 1.0) / c * ((c - 1.0) * 0.9 / 0.1).ln();
        assert!((best_probability(needed, 10) - 0.9).abs() < 1e-9);
        assert!(best_probability(64.0, 10) > 0.999_999);
    }

    #[test]
    fn the_memory_drift_is_the_mean_cosine_of_each_image() {
        // Two slots in 2-D: one image unmoved, one turned by 90°.
        let stored = [1.0, 0.0, 0.0, 2.0];
        let fresh = [3.0, 0.0, 1.0, 0.0];
        let d = MemoryDrift::of(&stored, &fresh, 2, 1).unwrap();
        assert!((d.mean_cos - 0.5).abs() < 1e-12);
        assert_eq!((d.slots, d.steps), (2, 2));
        assert!(MemoryDrift::of(&[], &[], 2, 1).is_none());
    }

    #[test]
    fn the_center_spread_finds_the_closest_classes() {
        // Three classes of two sub-centers in 2-D: class 2's second sub-center nearly on class
        // 0's first.
        let w = [
            1.0, 0.0, 0.0, 1.0, // class 0
            -1.0, 0.0, 0.0, -1.0, // class 1
            0.5, 0.5, 0.99, 0.1, // class 2
        ];
        let s = CenterSpread::of(&w, 2, 2).unwrap();
        assert_eq!(s.classes, (0, 2));
        assert!((s.max_cos - 0.99 / (0.99f64.powi(2) + 0.01).sqrt()).abs() < 1e-6);
        assert!(CenterSpread::of(&w[..4], 2, 2).is_none());
    }
}
