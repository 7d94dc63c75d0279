//! Rules on what the tower puts out: test embeddings gathered into one point or one
//! direction (`embedding_collapse`), and ReLU units that never activate (`dead_relu`).

use super::{Evidence, Finding, Severity, finding};
use crate::vocab::Miner;

/// Collapse: the mean distance between two embeddings relative to their mean norm (about 1
/// for a healthy embedding: the reference recipe gives 1.04), and the effective rank.
const COLLAPSED_SPREAD: f64 = 1e-2;
const COLLAPSING_SPREAD: f64 = 0.15;
const COLLAPSED_RANK: f64 = 1.5;
/// Dead ReLUs: a layer with this share of silent units has lost most of its capacity.
const DEAD_WARN: f64 = 0.4;
const DEAD_FAIL: f64 = 0.9;

pub(super) fn collapse(e: &Evidence, out: &mut Vec<Finding>) {
    let Some(s) = &e.embeddings else { return };
    let spread = s.mean_pairwise_distance / (s.mean_norm + 1e-12);
    let collapsed = s.mean_pairwise_distance == 0.0 || spread < COLLAPSED_SPREAD;
    let severity = if collapsed || s.effective_rank < COLLAPSED_RANK {
        Severity::Fail
    } else if spread < COLLAPSING_SPREAD {
        Severity::Warn
    } else {
        return;
    };
    {
        let what = if spread < COLLAPSING_SPREAD {
            format!(
                "the test embeddings are {} one point: the mean distance between two of them is \
                 {:.3e}, {:.1}% of their mean norm {:.3e} (a healthy embedding spreads about as far as \
                 it is long)",
                if collapsed {
                    "(nearly)"
                } else {
                    "closing in on"
                },
                s.mean_pairwise_distance,
                100.0 * spread,
                s.mean_norm
            )
        } else {
            format!(
                "the test embeddings spread along about one direction (effective rank {:.2} of {} \
                 dimensions)",
                s.effective_rank, s.dim
            )
        };
        let advice = if e.miner == Some(Miner::BatchHard) {
            "Batch-hard mining from scratch is known to collapse: the hardest positive and negative \
             of an untrained embedding are best served by shrinking everything. Use --miner \
             semi-hard or batch-all, or start from a model trained on random triplets, or lower \
             the learning rate."
        } else {
            "The loss is satisfied by mapping everything to the same place: give the contrastive or \
             triplet loss a margin > 0 (e.g. 1.0, or 0.2 with --normalize-embeddings), check that \
             Different pairs are sampled, and that no ReLU ends the tower (see dead_relu)."
        };
        out.push(finding("embedding_collapse", severity, what, advice));
    }
}

pub(super) fn dead_relus(e: &Evidence, out: &mut Vec<Finding>) {
    let worst = e
        .relu
        .iter()
        .max_by(|a, b| a.dead_fraction().total_cmp(&b.dead_fraction()));
    let Some(worst) = worst else { return };
    let frac = worst.dead_fraction();
    let output_dead = e
        .relu
        .iter()
        .any(|r| r.is_output && r.dead_fraction() >= 0.5);
    let severity = if frac >= DEAD_FAIL || output_dead {
        Severity::Fail
    } else if frac >= DEAD_WARN {
        Severity::Warn
    } else {
        return;
    };
    let list = e
        .relu
        .iter()
        .filter(|r| r.dead > 0)
        .map(|r| format!("{}: {}/{}", r.layer, r.dead, r.units))
        .collect::<Vec<_>>()
        .join(", ");
    out.push(finding(
        "dead_relu",
        severity,
        format!(
            "{:.0}% of the units of {} never activate on validation images (dead units per layer: {list})",
            100.0 * frac,
            worst.layer
        ),
        "A dead ReLU passes no gradient and never recovers. Lower the learning rate; do not end the \
         tower with a ReLU (an embedding should be free to take negative values); or use a leaky \
         activation.",
    ));
}
