//! Rules on how the validation distances rank Same pairs against Different ones: backwards
//! (`inverted_labels`), or no better than chance (`chance_accuracy`).

use super::{Evidence, Finding, Severity, finding};
use crate::vocab::PairLabel;

/// How far below 0.5 the validation AUC must fall to call the labels inverted: at least this,
/// and at least `AUC_NOISE` standard errors of the AUC of a chance model on that many pairs
/// (0.006 on 10,000 balanced pairs, 0.018 on 1,000), so sampling noise never fires it.
const INVERTED_BELOW_HALF: f64 = 0.05;
const AUC_NOISE: f64 = 4.0;
/// Up to this AUC (or this accuracy) the model is at chance: a weak but real model on
/// Fashion-MNIST reaches 0.85 AUC within a few dozen steps.
const CHANCE_AUC: f64 = 0.6;
const CHANCE_ACCURACY: f64 = 0.6;
/// A threshold that calls more than this share of balanced pairs one way is degenerate.
const ONE_WAY_SHARE: f64 = 0.95;

pub(super) fn labels_and_chance(e: &Evidence, out: &mut Vec<Finding>) {
    let auc = e.val_roc_auc;
    if e.val.scores.is_empty() || !auc.is_finite() {
        return;
    }
    // Standard error of a chance model's AUC (Hanley & McNeil under the null).
    let n_same = e
        .val
        .labels
        .iter()
        .filter(|&&l| l == PairLabel::Same)
        .count() as f64;
    let n_diff = e.val.labels.len() as f64 - n_same;
    let se = ((n_same + n_diff + 1.0) / (12.0 * n_same * n_diff).max(1.0)).sqrt();
    if auc < 0.5 - INVERTED_BELOW_HALF.max(AUC_NOISE * se) {
        out.push(finding(
            "inverted_labels",
            Severity::Fail,
            format!(
                "Same pairs score as LESS alike than Different pairs: validation ROC AUC {auc:.3}, \
                 well below the 0.5 of chance. The model learned the pair labels backwards."
            ),
            "Check which value means Same in your pair labels: for the contrastive loss Same pairs \
             are pulled together (loss d²) and Different pairs pushed past the margin. A 1/0 label \
             whose meaning flipped between the data and the loss produces exactly this.",
        ));
        return;
    }
    let all: Vec<f32> = {
        let mut v: Vec<f32> = e
            .val
            .scores
            .iter()
            .copied()
            .filter(|s| s.is_finite())
            .collect();
        v.sort_by(f32::total_cmp);
        v
    };
    // Pairs called Same: score ≤ threshold.
    let called_same =
        all.partition_point(|&s| s <= e.val_threshold) as f64 / all.len().max(1) as f64;
    let one_way = !(1.0 - ONE_WAY_SHARE..=ONE_WAY_SHARE).contains(&called_same);
    if auc < CHANCE_AUC || e.val_accuracy < CHANCE_ACCURACY || one_way {
        let how = if one_way {
            format!(
                "; the chosen threshold calls {:.0}% of the (balanced) validation pairs Same",
                100.0 * called_same
            )
        } else {
            String::new()
        };
        out.push(finding(
            "chance_accuracy",
            Severity::Fail,
            format!(
                "validation pair accuracy {:.3} and ROC AUC {auc:.3}: the distances separate Same from \
                 Different pairs no better than chance{how}",
                e.val_accuracy
            ),
            "Check that each image's label belongs to that image (a shuffle of images and labels \
             out of step gives exactly 50%); that the loss sees the embeddings' distance, not a \
             constant; and that the learning rate is neither tiny nor huge. Look at the other \
             findings: a collapsed embedding or dead ReLUs also end here.",
        ));
    }
}
