//! Rules on the pairs the run trained and was scored on: training pairs scored far better
//! than validation ones (`overfitting`), validation far better than test (`val_test_gap`),
//! and sampled pairs far from balanced (`pair_imbalance`).

use super::{Evidence, Finding, Severity, finding};

/// Overfitting: train accuracy minus validation accuracy.
const GAP_WARN: f64 = 0.1;
const GAP_FAIL: f64 = 0.2;
/// Validation accuracy minus test accuracy (same protocol, same kind of pairs).
const VAL_TEST_GAP: f64 = 0.1;
/// Share of Same pairs outside these bounds.
const IMBALANCE_WARN: (f64, f64) = (0.2, 0.8);
const IMBALANCE_FAIL: (f64, f64) = (0.05, 0.95);

pub(super) fn gaps(e: &Evidence, out: &mut Vec<Finding>) {
    if let Some(train) = e.train_accuracy {
        let gap = train - e.val_accuracy;
        if gap > GAP_WARN {
            out.push(finding(
                "overfitting",
                if gap > GAP_FAIL {
                    Severity::Fail
                } else {
                    Severity::Warn
                },
                format!(
                    "training pairs score {train:.3} but validation pairs {:.3}: a gap of {gap:.3}; \
                     the model memorises its training images",
                    e.val_accuracy
                ),
                "Train on more images, or for fewer steps (watch validation in metrics.jsonl); add \
                 augmentation (--rotation-range, --width-shift-range, …), weight decay, or a smaller \
                 embedding.",
            ));
        }
    }
    if let Some(test) = e.test_accuracy {
        let gap = e.val_accuracy - test;
        if gap > VAL_TEST_GAP {
            let (severity, why) = if e.class_disjoint {
                (
                    Severity::Info,
                    "expected in part: test classes were never seen in training",
                )
            } else {
                (
                    Severity::Warn,
                    "validation may share images or near-duplicates with training (a split leak), \
                     or test images come from another distribution",
                )
            };
            let advice = if e.class_disjoint {
                "On unseen classes a threshold chosen on seen ones transfers poorly: read the test \
                 ROC AUC and the retrieval figures, which need no threshold; more training classes \
                 or a normalised embedding usually generalise better."
            } else {
                "Make sure validation images are held out of training and drawn like the test set."
            };
            out.push(finding(
                "val_test_gap",
                severity,
                format!(
                    "validation pairs score {:.3} but test pairs {test:.3}: {why}",
                    e.val_accuracy
                ),
                advice,
            ));
        }
    }
}

pub(super) fn imbalance(e: &Evidence, out: &mut Vec<Finding>) {
    if e.sampled_pairs == 0 {
        return;
    }
    let same = e.sampled_same as f64 / e.sampled_pairs as f64;
    let severity = if !(IMBALANCE_FAIL.0..=IMBALANCE_FAIL.1).contains(&same) {
        Severity::Fail
    } else if !(IMBALANCE_WARN.0..=IMBALANCE_WARN.1).contains(&same) {
        Severity::Warn
    } else {
        return;
    };
    out.push(finding(
        "pair_imbalance",
        severity,
        format!(
            "{:.1}% of the {} training pairs were Same pairs: the loss mostly sees one kind",
            100.0 * same,
            e.sampled_pairs
        ),
        "Sample Same and Different pairs about equally (--positive-fraction 0.5); with many \
         classes, pairs drawn at random are nearly all Different.",
    ));
}
