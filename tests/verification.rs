//! Verification metrics on hand-computed examples, against O(n²) brute force, and the
//! protocol rule that the threshold comes from validation, never from test.
//!
//! AUC values here are ratios of small integers, so they are compared to 1e-12 (f64
//! rounding of a handful of additions and one division is far below that).

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use siamese_gpu::eval::verification::{
    THRESHOLD_CANDIDATES, best_threshold, pair_accuracy, roc_auc, threshold_candidates, verify,
};
use siamese_gpu::vocab::PairLabel::{self, Different as D, Same as S};

const TOL: f64 = 1e-12;

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= TOL
}

/// P(d_same < d_diff) + ½·P(d_same = d_diff) over all (Same, Different) pairs, NaN
/// ranked above every number.
fn brute_auc(d: &[f32], l: &[PairLabel]) -> f64 {
    let key = |x: f32| if x.is_nan() { f64::INFINITY } else { x as f64 };
    let (mut wins, mut pairs) = (0.0, 0.0);
    for i in 0..d.len() {
        for j in 0..d.len() {
            if l[i] == S && l[j] == D {
                let (s, n) = (key(d[i]), key(d[j]));
                let nan_tie = d[i].is_nan() && d[j].is_nan();
                wins += if nan_tie || s == n {
                    0.5
                } else if s < n || (!d[i].is_nan() && d[j].is_nan()) {
                    1.0
                } else {
                    0.0
                };
                pairs += 1.0;
            }
        }
    }
    wins / pairs
}

#[test]
fn roc_auc_on_hand_computed_examples() {
    // Perfect separation: every Same closer than every Different.
    let auc = roc_auc(&[0.1, 0.5, 0.2, 0.9], &[S, D, S, D]);
    assert!(close(auc, 1.0), "{auc}");
    // Inverted.
    let auc = roc_auc(&[0.1, 0.5, 0.2, 0.9], &[D, S, D, S]);
    assert!(close(auc, 0.0), "{auc}");
    // All tied: every comparison counts half.
    let auc = roc_auc(&[0.3; 5], &[S, D, S, D, D]);
    assert!(close(auc, 0.5), "{auc}");
    // Worked example with ties. Same {0.1, 0.4, 0.4}, Different {0.4, 0.6}: of the 6
    // (Same, Different) comparisons, 0.1 beats both (2), each 0.4 ties 0.4 (½ + ½) and
    // beats 0.6 (2): 5 / 6.
    let auc = roc_auc(&[0.4, 0.1, 0.6, 0.4, 0.4], &[S, S, D, D, S]);
    assert!(close(auc, 5.0 / 6.0), "{auc}");
    // -0.0 and 0.0 are the same distance: a tie, ½.
    let auc = roc_auc(&[0.0, -0.0], &[S, D]);
    assert!(close(auc, 0.5), "{auc}");
}

#[test]
fn roc_auc_ranks_nan_as_the_largest_distance_and_is_nan_without_both_labels() {
    assert!(close(roc_auc(&[0.1, f32::NAN], &[S, D]), 1.0));
    assert!(close(roc_auc(&[f32::NAN, 0.1], &[S, D]), 0.0));
    assert!(close(roc_auc(&[f32::NAN, f32::NAN], &[S, D]), 0.5));
    assert!(close(roc_auc(&[f32::NAN, f32::INFINITY], &[S, D]), 0.0));
    assert!(roc_auc(&[0.1, 0.2], &[S, S]).is_nan());
    assert!(roc_auc(&[], &[]).is_nan());
}

#[test]
fn roc_auc_matches_brute_force_on_random_pairs_with_many_ties() {
    let mut rng = StdRng::seed_from_u64(17);
    for trial in 0..20 {
        let n = rng.random_range(2..300);
        // Distances on a coarse grid (ties everywhere), a few NaNs, Same pairs shifted
        // lower so the AUC is informative.
        let l: Vec<PairLabel> = (0..n)
            .map(|_| if rng.random::<f64>() < 0.4 { S } else { D })
            .collect();
        let d: Vec<f32> = l
            .iter()
            .map(|&lab| {
                if rng.random::<f64>() < 0.03 {
                    f32::NAN
                } else {
                    let shift = if lab == S { 0 } else { 3 };
                    (rng.random_range(0..10u32) + shift) as f32 * 0.25
                }
            })
            .collect();
        let want = brute_auc(&d, &l);
        let got = roc_auc(&d, &l);
        if want.is_nan() {
            assert!(got.is_nan(), "trial {trial}");
        } else {
            // Sums of at most 300² halves, one division: 1e-12 is generous.
            assert!(
                close(got, want),
                "trial {trial}: {got} vs brute force {want}"
            );
        }
    }
}

#[test]
fn best_threshold_and_accuracy_on_a_hand_computed_example() {
    // Sorted: 0.1 S, 0.2 S, 0.3 D, 0.4 S, 0.5 D, 0.6 D. Predicting Same for d <= t:
    //   t in [0.2, 0.3): 5/6 correct (0.4 S missed);  t in [0.4, 0.5): 5/6 (0.3 D missed);
    //   every other t fewer. The first candidate reaching 5/6 is the quantile at q = 0.2
    //   of the 6 unique values, virtual index 0.2·5 = 1: exactly 0.2. An implementation
    //   predicting Same only for d < t would score 4/6 there and pick a larger t.
    let d = [0.5f32, 0.1, 0.4, 0.6, 0.3, 0.2];
    let l = [D, S, S, D, D, S];
    let t = best_threshold(&d, &l);
    assert_eq!(t, 0.2f32, "threshold {t}"); // exact: an interpolation weight of 0
    assert!(close(pair_accuracy(&d, &l, t), 5.0 / 6.0));
    // Accuracy at other thresholds, by hand.
    assert!(close(pair_accuracy(&d, &l, 0.35), 4.0 / 6.0)); // 0.3 D and 0.4 S wrong
    assert!(close(pair_accuracy(&d, &l, 0.0), 3.0 / 6.0)); // all predicted Different
    assert!(close(pair_accuracy(&d, &l, 1.0), 3.0 / 6.0)); // all predicted Same
    assert!(close(pair_accuracy(&d, &l, 0.45), 5.0 / 6.0));
    // NaN distances are predicted Different.
    assert!(close(
        pair_accuracy(&[f32::NAN, f32::NAN], &[S, D], 10.0),
        0.5
    ));
    assert!(pair_accuracy(&[], &[], 0.5).is_nan());
}

#[test]
fn threshold_candidates_are_numpy_linear_quantiles_of_the_unique_distances() {
    // Unique values {0, 1, 3} (duplicates and a NaN dropped). numpy:
    // np.quantile([0, 1, 3], np.linspace(0, 1, 2001)) has q = k/2000 at virtual index
    // 2q: k = 500 → 0.5, k = 1000 → 1, k = 1500 → 1 + 2·0.5 = 2, k = 2000 → 3.
    let c = threshold_candidates(&[3.0, 1.0, 0.0, 1.0, 3.0, f32::NAN, 0.0]);
    assert_eq!(c.len(), THRESHOLD_CANDIDATES);
    // Exact (interpolation between small integers with dyadic weights).
    assert_eq!(
        (c[0], c[500], c[1000], c[1500], c[2000]),
        (0.0, 0.5, 1.0, 2.0, 3.0)
    );
    // k = 1: 2/2000 = 0.001 (not exact in binary; rounded down to an f32, so ≤ 0.001).
    assert!(
        c[1] <= 0.001 && (c[1] as f64 - 0.001).abs() < 1e-9,
        "{}",
        c[1]
    );
    assert!(c.windows(2).all(|w| w[0] <= w[1]), "not ascending");
    // A single value gives 2001 copies of it; no numbers, no candidates.
    assert!(threshold_candidates(&[0.7, 0.7]).iter().all(|&t| t == 0.7));
    assert!(threshold_candidates(&[f32::NAN]).is_empty());
}

#[test]
fn best_threshold_agrees_with_an_exhaustive_scan_of_its_candidates() {
    // The fast path (binary search over sorted distances) against the reference's loop:
    // for each candidate in order, accuracy by a full pass, keep the first strict best.
    let mut rng = StdRng::seed_from_u64(3);
    for trial in 0..10 {
        let n = rng.random_range(5..400);
        let l: Vec<PairLabel> = (0..n)
            .map(|_| if rng.random::<bool>() { S } else { D })
            .collect();
        let d: Vec<f32> = l
            .iter()
            .map(|&lab| {
                let base = if lab == S { 0.0 } else { 0.6 };
                (base + rng.random::<f64>()) as f32
            })
            .collect();
        let (mut best_acc, mut best_t) = (0.0, 0.0f32);
        for t in threshold_candidates(&d) {
            let acc = pair_accuracy(&d, &l, t);
            if acc > best_acc {
                (best_acc, best_t) = (acc, t);
            }
        }
        assert_eq!(best_threshold(&d, &l), best_t, "trial {trial}");
    }
}

#[test]
fn verify_chooses_the_threshold_on_validation_not_on_test() {
    // Validation separates at 0.3 | 0.5; test separates at 1.2 | 2.0, so a threshold
    // chosen on test would give test accuracy 1, but the validation threshold (0.3)
    // predicts every test pair Different: accuracy exactly 0.5. AUC is a test-set figure
    // and does not depend on the threshold: 1.
    let val_d = [0.1f32, 0.2, 0.3, 0.5, 0.6, 0.7];
    let val_l = [S, S, S, D, D, D];
    let test_d = [1.0f32, 1.1, 1.2, 2.0, 2.1, 2.2];
    let test_l = [S, S, S, D, D, D];
    let v = verify(&val_d, &val_l, &test_d, &test_l);
    assert_eq!(v.threshold, 0.3f32, "{v:?}"); // first candidate with 6/6 on validation
    assert!(close(v.accuracy, 0.5), "{v:?}");
    assert!(close(v.roc_auc, 1.0), "{v:?}");
    // Swapping the roles moves the threshold: it follows whichever set is "validation".
    let w = verify(&test_d, &test_l, &val_d, &val_l);
    assert_eq!(w.threshold, 1.2f32, "{w:?}");
    assert!(close(w.accuracy, 0.5), "{w:?}"); // 1.2 predicts every pair of the other set Same
}

#[test]
fn precision_recall_f1_and_eer_on_a_worked_example() {
    use siamese_gpu::eval::verification::{equal_error_rate, precision_recall_f1};
    let d = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
    let labels = [S, S, D, S, D, D];
    // At 0.35: called Same 0.1 (S), 0.2 (S), 0.3 (D) → tp 2, fp 1, fn 1 (0.4 is S).
    let (p, r, f1) = precision_recall_f1(&d, &labels, 0.35);
    for (got, want) in [(p, 2.0 / 3.0), (r, 2.0 / 3.0), (f1, 2.0 / 3.0)] {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
    // Sweeping: at 0.3 the false-accept rate (1 of 3 Different) equals the false-reject
    // rate (1 of 3 Same, the one at 0.4): EER 1/3 at threshold 0.3.
    let (eer, t) = equal_error_rate(&d, &labels);
    assert!(
        (eer - 1.0 / 3.0).abs() < 1e-12 && t == 0.3,
        "eer {eer} at {t}"
    );
    // Perfect separation: EER 0; nothing called Same: precision and F1 0 by convention.
    let (eer, t) = equal_error_rate(&[0.1, 0.2, 0.8, 0.9], &[S, S, D, D]);
    assert_eq!((eer, t), (0.0, 0.2));
    assert_eq!(precision_recall_f1(&d, &labels, 0.0), (0.0, 0.0, 0.0));
    // One class only: no EER.
    assert!(equal_error_rate(&[0.1, 0.2], &[S, S]).0.is_nan());
}
