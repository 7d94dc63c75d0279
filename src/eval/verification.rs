//! Pair verification metrics: given a distance per pair and whether the pair is Same or
//! Different, how well do distances separate the two — ROC AUC, the best threshold, and
//! accuracy at a threshold.
//!
//! Convention: a LOWER distance means "more likely Same", and a pair is predicted Same
//! when `d <= threshold`. For a score where higher means Same (a BCE head's logit, a
//! cosine similarity), pass its negation.
//!
//! The protocol is the PyTorch reference's: the threshold is chosen on VALIDATION pairs
//! ([`best_threshold`]) and only then applied to the test pairs ([`verify`]), so the
//! reported test accuracy is not tuned on test. Choosing it on test inflates accuracy,
//! most of all on small or hard sets, and is a common bug.
//!
//! NaN distances (a diverged model) are treated as the largest distance: never below a
//! threshold, so predicted Different, and ranked above every number (ties among
//! themselves) in the AUC. A NaN therefore costs accuracy instead of vanishing from the
//! figures; the trainer's doctor reports NaN separately.

use std::cmp::Ordering;

use crate::vocab::PairLabel;

/// Number of threshold candidates: the reference's `np.linspace(0, 1, 2001)` quantiles.
pub const THRESHOLD_CANDIDATES: usize = 2001;

/// The plotting positions of numpy's default quantile method, "linear" (Hyndman & Fan 7).
const ALPHA: f64 = 1.0;
const BETA: f64 = 1.0;

/// Orders distances ascending with NaN after everything (and all NaNs equal); `-0.0`
/// and `0.0` compare equal, so they tie as numbers do.
pub fn cmp_distance(x: f32, y: f32) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (false, false) => x.partial_cmp(&y).unwrap(),
        (a, b) => a.cmp(&b),
    }
}

fn check_lengths(what: &str, distances: &[f32], labels: &[PairLabel]) {
    assert_eq!(
        distances.len(),
        labels.len(),
        "{what}: {} distances but {} labels; each pair needs one of each",
        distances.len(),
        labels.len()
    );
}

/// The probability that a random Same pair has a smaller distance than a random
/// Different pair, ties counting half: the area under the ROC curve, computed from ranks
/// in O(n log n) (the Mann–Whitney U statistic, as the reference's `roc_auc`).
///
/// Returns NaN when there is no Same or no Different pair (the AUC is undefined).
/// Panics if the slices differ in length.
pub fn roc_auc(distances: &[f32], labels: &[PairLabel]) -> f64 {
    check_lengths("roc_auc", distances, labels);
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_unstable_by(|&i, &j| cmp_distance(distances[i], distances[j]));
    // Walk groups of equal distance in ascending order. Each Different pair in a group
    // beats every Same pair strictly below it, and half of each Same pair tied with it;
    // this is the rank-sum formula with tied ranks averaged.
    let (mut same_below, mut wins) = (0u64, 0f64);
    let (mut n_same, mut n_diff) = (0u64, 0u64);
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len()
            && cmp_distance(distances[order[start]], distances[order[end]]) == Ordering::Equal
        {
            end += 1;
        }
        let same = order[start..end]
            .iter()
            .filter(|&&i| labels[i] == PairLabel::Same)
            .count() as u64;
        let diff = (end - start) as u64 - same;
        wins += diff as f64 * (same_below as f64 + 0.5 * same as f64);
        same_below += same;
        n_same += same;
        n_diff += diff;
        start = end;
    }
    if n_same == 0 || n_diff == 0 {
        return f64::NAN;
    }
    wins / (n_same as f64 * n_diff as f64)
}

/// The largest f32 that is `<= t`. For any f32 `d`, `d <= t` (compared in f64, as numpy
/// compares a float32 distance with a float64 quantile) exactly when `d <= floor_f32(t)`,
/// so the returned f32 threshold predicts exactly as the f64 candidate did.
fn floor_f32(t: f64) -> f32 {
    let c = t as f32;
    if (c as f64) > t { c.next_down() } else { c }
}

/// numpy's `_lerp`: `a + (b - a)·g`, computed from the top end for `g >= 0.5` so that
/// `g = 1` gives `b` exactly. `b - a` is an f32 difference, as numpy subtracts two float32
/// values before multiplying by the float64 gamma.
fn lerp(a: f32, b: f32, g: f64) -> f64 {
    let diff = (b - a) as f64;
    if g >= 0.5 {
        b as f64 - diff * (1.0 - g)
    } else {
        a as f64 + diff * g
    }
}

/// The threshold candidates of [`best_threshold`], ascending: the
/// [`THRESHOLD_CANDIDATES`] quantiles at `linspace(0, 1, 2001)` of the UNIQUE non-NaN
/// distances, linearly interpolated as numpy's default `np.quantile` does (virtual index
/// `q·(m−1)`), each rounded down to an f32 (see `floor_f32`). Empty if no distance is a
/// number.
pub fn threshold_candidates(distances: &[f32]) -> Vec<f32> {
    let mut unique: Vec<f32> = distances.iter().copied().filter(|d| !d.is_nan()).collect();
    unique.sort_unstable_by(|a, b| cmp_distance(*a, *b));
    unique.dedup_by(|a, b| a == b);
    let m = unique.len();
    if m == 0 {
        return Vec::new();
    }
    let last = THRESHOLD_CANDIDATES - 1;
    let step = 1.0 / last as f64;
    (0..THRESHOLD_CANDIDATES)
        .map(|k| {
            // numpy's linspace: k·step, the last one set to exactly 1.
            let q = if k == last { 1.0 } else { k as f64 * step };
            // numpy's virtual index `n·q + (α + q·(1 − α − β)) − 1`, with α = β = 1 for
            // method "linear"; kept in numpy's form so the float rounding is the same.
            let v = m as f64 * q + (ALPHA + q * (1.0 - ALPHA - BETA)) - 1.0;
            let t = if v >= (m - 1) as f64 {
                unique[m - 1] as f64
            } else if v < 0.0 {
                unique[0] as f64
            } else {
                let i = v.floor() as usize;
                let g = v - i as f64;
                if g == 0.0 {
                    // Exact hit; also keeps an infinite neighbour from making 0·inf = NaN.
                    unique[i] as f64
                } else {
                    lerp(unique[i], unique[i + 1], g)
                }
            };
            floor_f32(t)
        })
        .filter(|t| !t.is_nan())
        .collect()
}

/// The threshold with the highest accuracy among [`threshold_candidates`] (predict Same
/// when `d <= t`), the first (smallest) candidate on ties — the reference's
/// `best_threshold`.
///
/// As in the reference, a candidate must beat accuracy 0 to be taken, so with no
/// candidate at all (no distance that is a number) or none classifying any pair
/// correctly, 0.0 is returned. Panics if the slices differ in length.
pub fn best_threshold(distances: &[f32], labels: &[PairLabel]) -> f32 {
    check_lengths("best_threshold", distances, labels);
    // Sorted distances (NaN last) with a running count of Same pairs, so each candidate's
    // accuracy is one binary search: O(n log n) instead of 2001 passes over the pairs.
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_unstable_by(|&i, &j| cmp_distance(distances[i], distances[j]));
    let sorted: Vec<f32> = order.iter().map(|&i| distances[i]).collect();
    let mut same_upto = Vec::with_capacity(order.len() + 1);
    same_upto.push(0usize);
    for &i in &order {
        let prev = *same_upto.last().unwrap();
        same_upto.push(prev + usize::from(labels[i] == PairLabel::Same));
    }
    let n_diff = distances.len() - same_upto[order.len()];
    let (mut best_correct, mut best_t) = (0usize, 0.0f32);
    for t in threshold_candidates(distances) {
        // NaN <= t is false and NaNs sort last, so the predicate is a valid partition.
        let k = sorted.partition_point(|&d| d <= t);
        let same_le = same_upto[k];
        let correct = same_le + (n_diff - (k - same_le));
        if correct > best_correct {
            (best_correct, best_t) = (correct, t);
        }
    }
    best_t
}

/// The share of pairs classified correctly when Same is predicted for `d <= threshold`
/// (NaN distances are predicted Different). NaN for no pairs. Panics if the slices differ
/// in length.
pub fn pair_accuracy(distances: &[f32], labels: &[PairLabel], threshold: f32) -> f64 {
    check_lengths("pair_accuracy", distances, labels);
    if distances.is_empty() {
        return f64::NAN;
    }
    let correct = distances
        .iter()
        .zip(labels)
        .filter(|&(&d, &l)| (d <= threshold) == (l == PairLabel::Same))
        .count();
    correct as f64 / distances.len() as f64
}

/// Precision, recall and F1 of the Same class (predicted Same when d ≤ `threshold`). A
/// ratio with an empty denominator is 0 (no prediction, or no Same pair).
pub fn precision_recall_f1(
    distances: &[f32],
    labels: &[PairLabel],
    threshold: f32,
) -> (f64, f64, f64) {
    check_lengths("precision_recall_f1", distances, labels);
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&d, &l) in distances.iter().zip(labels) {
        match (d <= threshold, l == PairLabel::Same) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (precision, recall) = (ratio(tp, tp + fp), ratio(tp, tp + fn_));
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (precision, recall, f1)
}

/// The equal error rate: where the false-accept rate (Different pairs called Same) meets
/// the false-reject rate (Same pairs called Different) as the threshold sweeps the sorted
/// distances. Returns the mean of the two rates at the threshold where they are closest
/// (ties: the first), and that threshold; NaN if either class is absent.
pub fn equal_error_rate(distances: &[f32], labels: &[PairLabel]) -> (f64, f32) {
    check_lengths("equal_error_rate", distances, labels);
    let same = labels.iter().filter(|&&l| l == PairLabel::Same).count();
    let different = labels.len() - same;
    if same == 0 || different == 0 {
        return (f64::NAN, f32::NAN);
    }
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_by(|&a, &b| distances[a].total_cmp(&distances[b]));
    // Threshold below every distance: everything rejected (FAR 0, FRR 1).
    let (mut accepted_same, mut accepted_different) = (0usize, 0usize);
    let mut best = (f64::INFINITY, 0.5, f32::NEG_INFINITY);
    let mut i = 0;
    while i < order.len() {
        let t = distances[order[i]];
        // Accept every pair at distance t (ties move together).
        while i < order.len() && distances[order[i]] == t {
            match labels[order[i]] {
                PairLabel::Same => accepted_same += 1,
                PairLabel::Different => accepted_different += 1,
            }
            i += 1;
        }
        let far = accepted_different as f64 / different as f64;
        let frr = 1.0 - accepted_same as f64 / same as f64;
        if (far - frr).abs() < best.0 {
            best = ((far - frr).abs(), (far + frr) / 2.0, t);
        }
    }
    (best.1, best.2)
}

/// Verification figures of a model: test accuracy at the threshold chosen on validation,
/// that threshold, the test ROC AUC, precision / recall / F1 of the Same class at that
/// threshold, and the test equal error rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verification {
    pub accuracy: f64,
    pub threshold: f32,
    pub roc_auc: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub eer: f64,
}

/// Chooses the threshold on the validation pairs, then measures accuracy and ROC AUC on
/// the test pairs. The test pairs never influence the threshold.
pub fn verify(
    val_distances: &[f32],
    val_labels: &[PairLabel],
    test_distances: &[f32],
    test_labels: &[PairLabel],
) -> Verification {
    let threshold = best_threshold(val_distances, val_labels);
    let (precision, recall, f1) = precision_recall_f1(test_distances, test_labels, threshold);
    Verification {
        accuracy: pair_accuracy(test_distances, test_labels, threshold),
        threshold,
        roc_auc: roc_auc(test_distances, test_labels),
        precision,
        recall,
        f1,
        eer: equal_error_rate(test_distances, test_labels).0,
    }
}
