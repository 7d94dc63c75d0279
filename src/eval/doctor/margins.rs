//! Rules on the loss margin: one of 0, one no pair can meet, and where it sits among the
//! validation distances (`margin_too_small`, `margin_too_large`).

use super::{Evidence, Finding, Severity, finding, margin_f64};
use crate::vocab::Distance;
use crate::vocab::LossKind;
use crate::vocab::PairLabel;

/// Margins: shares of validation pairs on the wrong side of the margin.
const INSIDE_MARGIN_WARN: f64 = 0.9;

fn median(sorted: &[f32]) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[sorted.len() / 2] as f64)
}

/// Share of `sorted` values strictly below `x`.
fn share_below(sorted: &[f32], x: f64) -> f64 {
    let below = sorted.partition_point(|&v| (v as f64) < x);
    below as f64 / sorted.len().max(1) as f64
}

/// What to try when the margin is too large (shared by the rule-based and the
/// distance-based findings).
const ADVICE_LARGE: &str = "Lower the margin to where it can be met: at most ~1.0 for normalised \
                            embeddings (distances lie in [0, 2]), or leave the embeddings unnormalised.";

/// The margin findings of a contrastive or triplet run (a BCE head has no margin). A margin of
/// 0 or one beyond the largest possible distance is wrong whatever the model learned; where
/// the margin sits among the validation distances is read only when the run is not `broken`.
pub(super) fn margins(e: &Evidence, broken: bool, out: &mut Vec<Finding>) {
    let Some(loss) = e.loss else { return };
    // The rules below read the margin of a loss on pair or triplet distances.
    if !matches!(loss, LossKind::Contrastive | LossKind::Triplet) {
        return;
    }
    let m = margin_f64(e.margin);
    if m == 0.0 {
        out.push(zero_margin(loss));
        return;
    }
    if let Some(f) = unreachable_margin(e, m) {
        out.push(f);
        return;
    }
    let (same, diff) = (e.val.of(PairLabel::Same), e.val.of(PairLabel::Different));
    if same.is_empty() || diff.is_empty() || broken {
        return;
    }
    match loss {
        LossKind::Contrastive => contrastive_placement(&same, &diff, m, out),
        _ => triplet_placement(&same, &diff, m, out),
    }
}

/// A margin of 0 makes the loss trivially satisfiable; how depends on the loss.
fn zero_margin(loss: LossKind) -> Finding {
    finding(
        "margin_too_small",
        Severity::Fail,
        format!(
            "the {loss} loss has margin 0: {}",
            if loss == LossKind::Contrastive {
                "Different pairs are never pushed apart, so mapping every image to one point is a perfect solution"
            } else {
                "a triplet is satisfied as soon as the negative is no closer than the positive, so the embedding need not separate classes"
            }
        ),
        "Give the loss a margin: 1.0 for the contrastive loss on unnormalised embeddings, 0.2–0.5 \
         with --normalize-embeddings.",
    )
}

/// The largest distance two embeddings can have, where the distance bounds it: L2-normalised
/// embeddings under the Euclidean or squared Euclidean distance, and cosine always.
fn max_distance(normalized: bool, distance: Option<Distance>) -> Option<f64> {
    match (normalized, distance) {
        (true, Some(Distance::Euclidean) | Some(Distance::Cosine)) => Some(2.0),
        (true, Some(Distance::SquaredEuclidean)) => Some(4.0),
        (_, Some(Distance::Cosine)) => Some(2.0),
        _ => None,
    }
}

/// A margin `m` no pair can ever satisfy: at least the largest possible distance.
fn unreachable_margin(e: &Evidence, m: f64) -> Option<Finding> {
    let b = max_distance(e.normalized, e.distance).filter(|&b| m >= b)?;
    Some(finding(
        "margin_too_large",
        Severity::Fail,
        format!(
            "margin {m} is at least the largest possible distance ({b}) between these embeddings: \
             no pair can ever satisfy it, so every pair keeps a loss and a gradient"
        ),
        ADVICE_LARGE,
    ))
}

/// The contrastive margin against the sorted validation distances: beyond nearly every
/// Different pair (the push apart dominates), or inside half the Same pairs (Different pairs
/// count as separated where Same pairs still sit).
fn contrastive_placement(same: &[f32], diff: &[f32], m: f64, out: &mut Vec<Finding>) {
    let inside = share_below(diff, m);
    if inside > INSIDE_MARGIN_WARN {
        out.push(finding(
            "margin_too_large",
            Severity::Warn,
            format!(
                "{:.0}% of the Different validation pairs are still inside the margin {m} at the \
                 end of training: the margin sits beyond the negative distance distribution \
                 (median {:.3}), so the push apart dominates the loss",
                100.0 * inside,
                median(diff).unwrap_or(0.0)
            ),
            ADVICE_LARGE,
        ));
    }
    let same_median = median(same).unwrap_or(0.0);
    if same_median > m {
        out.push(finding(
            "margin_too_small",
            Severity::Warn,
            format!(
                "half the Same validation pairs are farther apart ({same_median:.3}) than the \
                 margin {m}: Different pairs count as separated at distances where Same pairs \
                 still sit"
            ),
            "Raise the margin towards the scale of the distances (see the distance histogram), \
             or normalise the embeddings and use a margin of 0.5–1.0.",
        ));
    }
}

/// The triplet margin against the sorted validation distances: violated by nearly every
/// (Same, Different) combination, or a hair's breadth of the Different distances.
fn triplet_placement(same: &[f32], diff: &[f32], m: f64, out: &mut Vec<Finding>) {
    // Share of (positive, negative) combinations closer than the margin: the
    // validation stand-in for the share of active triplets.
    let active = same
        .iter()
        .map(|&p| share_below(diff, p as f64 + m))
        .sum::<f64>()
        / same.len() as f64;
    if active > INSIDE_MARGIN_WARN {
        out.push(finding(
            "margin_too_large",
            Severity::Warn,
            format!(
                "{:.0}% of validation (Same, Different) distance combinations still violate the \
                 margin {m}: almost every triplet keeps a loss",
                100.0 * active
            ),
            ADVICE_LARGE,
        ));
    }
    let diff_median = median(diff).unwrap_or(0.0);
    if m < 0.01 * diff_median {
        out.push(finding(
            "margin_too_small",
            Severity::Warn,
            format!(
                "margin {m} is under 1% of the typical Different-pair distance ({diff_median:.3}): \
                 triplets are satisfied by a hair"
            ),
            "Normalise the embeddings (--normalize-embeddings) and use a margin of 0.1–0.5.",
        ));
    }
}
