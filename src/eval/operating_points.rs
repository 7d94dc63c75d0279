//! Operating points: the thresholds a trained model is used at, each chosen on the
//! validation pairs for a target the user states — the best accuracy, the equal error rate,
//! or a false-accept rate (FAR) — with the false-accept and false-reject rates it gives on
//! the test pairs.
//!
//! A FAR target is certified, not only met on validation. Of the n validation Different
//! pairs, the threshold accepts at most the largest k whose one-sided 95% Clopper–Pearson
//! upper bound on the FAR (k accepted of n) is at or under the target: with 95% confidence,
//! the FAR on pairs drawn as the validation pairs were is at most the target. Clopper–Pearson
//! is the exact binomial bound (it never undercovers, unlike the normal approximation at
//! rates near 0). A target under the bound for k = 0, 1 − 0.05^(1/n) ≈ 3/n (the "rule of
//! three"), cannot be certified by n Different pairs and is refused, naming how many it
//! needs.
//!
//! Scores follow `verification`'s convention: lower is more alike, a pair is called Same when
//! its score is at most the threshold, and a NaN score is never accepted.

use std::fmt;

use crate::error::{Error, Result};
use crate::eval::verification::{best_threshold, cmp_distance, equal_error_rate};
use crate::vocab::PairLabel;

/// The confidence of the FAR bounds.
pub const FAR_CONFIDENCE: f64 = 0.95;

/// What a threshold is chosen for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The highest pair accuracy on validation (the threshold `verify` reports).
    Accuracy,
    /// Where the false-accept and false-reject rates meet.
    EqualErrorRate,
    /// A false-accept rate certified at [`FAR_CONFIDENCE`].
    FalseAcceptRate(f64),
}

impl Target {
    /// `accuracy`, `eer` or `far=RATE` (RATE in (0, 1), e.g. `far=1e-3`).
    pub fn parse(text: &str) -> Result<Target> {
        let refused = || {
            Error::Config(format!(
                "unknown operating point `{text}`: use accuracy, eer or far=RATE (e.g. far=1e-3)"
            ))
        };
        match text.trim().to_lowercase().as_str() {
            "accuracy" => Ok(Target::Accuracy),
            "eer" => Ok(Target::EqualErrorRate),
            other => {
                let rate = other.strip_prefix("far=").ok_or_else(refused)?;
                let rate: f64 = rate.parse().map_err(|_| refused())?;
                Target::far(rate)
            }
        }
    }

    /// A FAR target, refused outside (0, 1).
    pub fn far(rate: f64) -> Result<Target> {
        if rate > 0.0 && rate < 1.0 {
            Ok(Target::FalseAcceptRate(rate))
        } else {
            Err(Error::Config(format!(
                "a false-accept rate target must be in (0, 1), got {rate}"
            )))
        }
    }

    /// The targets every run stores: accuracy, the EER, then the FAR targets given.
    pub fn with_far(far: &[f64]) -> Vec<Target> {
        [Target::Accuracy, Target::EqualErrorRate]
            .into_iter()
            .chain(far.iter().map(|&r| Target::FalseAcceptRate(r)))
            .collect()
    }

    /// The threshold this target picks on `scores` by the rates themselves, uncertified:
    /// for a FAR target the largest threshold whose own FAR is at most the target. What the
    /// test pairs would choose, to show how far a threshold drifts.
    fn matching(self, scores: &[f32], labels: &[PairLabel]) -> f32 {
        match self {
            Target::Accuracy => best_threshold(scores, labels),
            Target::EqualErrorRate => equal_error_rate(scores, labels).1,
            Target::FalseAcceptRate(rate) => {
                let different = different_scores(scores, labels);
                let allowed = (rate * different.len() as f64).floor() as usize;
                threshold_accepting(&different, allowed, scores)
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Accuracy => write!(f, "accuracy"),
            Target::EqualErrorRate => write!(f, "eer"),
            Target::FalseAcceptRate(r) => write!(f, "far={r}"),
        }
    }
}

/// The false-accept rate (Different pairs called Same) and false-reject rate (Same pairs
/// called Different) of a threshold; NaN where a class has no pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub far: f64,
    pub frr: f64,
}

impl Rates {
    pub fn at(scores: &[f32], labels: &[PairLabel], threshold: f32) -> Rates {
        assert_eq!(scores.len(), labels.len(), "a label per score");
        let (mut same, mut rejected_same, mut different, mut accepted_different) = (0, 0, 0, 0);
        for (&s, &l) in scores.iter().zip(labels) {
            let accepted = s <= threshold;
            match l {
                PairLabel::Same => {
                    same += 1;
                    rejected_same += usize::from(!accepted);
                }
                PairLabel::Different => {
                    different += 1;
                    accepted_different += usize::from(accepted);
                }
            }
        }
        let ratio = |a: usize, b: usize| {
            if b == 0 {
                f64::NAN
            } else {
                a as f64 / b as f64
            }
        };
        Rates {
            far: ratio(accepted_different, different),
            frr: ratio(rejected_same, same),
        }
    }
}

/// The certificate of a FAR threshold: `accepted` of `different` validation Different pairs
/// were called Same, so the FAR is at most `upper` with [`FAR_CONFIDENCE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FarBound {
    pub accepted: usize,
    pub different: usize,
    pub upper: f64,
}

/// A threshold chosen on validation for `target`, and what it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatingPoint {
    pub target: Target,
    pub threshold: f32,
    pub val: Rates,
    pub test: Rates,
    /// FAR targets: the bound the threshold was certified by.
    pub far_bound: Option<FarBound>,
    /// The threshold the same target picks on the test pairs by their own rates (with
    /// held-out classes: on unseen classes), to show the drift from validation.
    pub test_threshold: f32,
}

impl OperatingPoint {
    /// The name a user picks it by: `accuracy`, `eer`, `far=0.001`.
    pub fn name(&self) -> String {
        self.target.to_string()
    }
}

/// P(X ≤ k) for X ~ Binomial(n, p), summed in log space (exact for any n a set holds).
fn binomial_cdf(k: usize, n: usize, p: f64) -> f64 {
    if k >= n || p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    // ln C(n, i) grows term by term; the terms are summed relative to their largest.
    let mut ln_choose = 0.0f64;
    let terms: Vec<f64> = (0..=k)
        .map(|i| {
            if i > 0 {
                ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
            }
            ln_choose + i as f64 * ln_p + (n - i) as f64 * ln_q
        })
        .collect();
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln())
        .exp()
        .min(1.0)
}

/// The one-sided Clopper–Pearson upper bound, at `confidence`, on a rate of which `k` of `n`
/// trials were seen: the p at which P(X ≤ k) = 1 − confidence. 1 when n = 0 or k = n.
pub fn rate_upper_bound(k: usize, n: usize, confidence: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let alpha = 1.0 - confidence;
    // P(X ≤ k) falls as p grows: bisect (to f64's resolution, 200 halvings are plenty).
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if binomial_cdf(k, n, mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The most Different pairs of `different` a threshold may accept with the FAR's upper
/// bound still at or under `target`; None when not even 0 is allowed (too few pairs).
pub fn max_false_accepts(target: f64, different: usize) -> Option<usize> {
    let certified = |k: usize| rate_upper_bound(k, different, FAR_CONFIDENCE) <= target;
    if !certified(0) {
        return None;
    }
    // The bound grows with k: the last k that passes, by bisection over [0, different).
    let (mut ok, mut fails) = (0usize, different);
    while fails - ok > 1 {
        let mid = ok + (fails - ok) / 2;
        if certified(mid) {
            ok = mid;
        } else {
            fails = mid;
        }
    }
    Some(ok)
}

/// The fewest Different pairs that can certify `target`: the n with 1 − α^(1/n) ≤ target.
pub fn pairs_to_certify(target: f64) -> usize {
    let alpha = 1.0 - FAR_CONFIDENCE;
    let mut n = (alpha.ln() / (-target).ln_1p()).ceil().max(1.0) as usize;
    // The closed form can land one off by rounding: settle it on the bound itself.
    while n > 1 && rate_upper_bound(0, n - 1, FAR_CONFIDENCE) <= target {
        n -= 1;
    }
    while rate_upper_bound(0, n, FAR_CONFIDENCE) > target {
        n += 1;
    }
    n
}

/// Validation pairs that draw [`pairs_to_certify`] Different pairs with room to spare: half
/// the balanced pairs are Different at random (a binomial count whose spread is a fraction
/// of a percent at these sizes), so twice as many and 10% more.
pub fn val_pairs_to_certify(target: f64) -> usize {
    let n = pairs_to_certify(target);
    2 * n + 2 * n / 10
}

/// The Different pairs' scores, ascending, NaN left out (never accepted).
fn different_scores(scores: &[f32], labels: &[PairLabel]) -> Vec<f32> {
    let mut d: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|&(s, &l)| l == PairLabel::Different && !s.is_nan())
        .map(|(&s, _)| s)
        .collect();
    d.sort_by(|a, b| cmp_distance(*a, *b));
    d
}

/// The largest threshold accepting at most `allowed` of the ascending `different` scores:
/// just under the (allowed + 1)-th, or, when all may be accepted, the largest score of all.
fn threshold_accepting(different: &[f32], allowed: usize, all: &[f32]) -> f32 {
    match different.get(allowed) {
        Some(&first_refused) => first_refused.next_down(),
        None => all
            .iter()
            .copied()
            .filter(|s| s.is_finite())
            .fold(f32::MIN, f32::max),
    }
}

/// The threshold for `target` on the validation `scores` (and the bound certifying a FAR
/// target); a FAR target that the validation Different pairs are too few to certify is
/// refused, naming how many it needs.
pub fn choose(
    target: Target,
    scores: &[f32],
    labels: &[PairLabel],
) -> Result<(f32, Option<FarBound>)> {
    let Target::FalseAcceptRate(rate) = target else {
        return Ok((target.matching(scores, labels), None));
    };
    let n = labels
        .iter()
        .filter(|&&l| l == PairLabel::Different)
        .count();
    let allowed = max_false_accepts(rate, n).ok_or_else(|| {
        let needed = pairs_to_certify(rate);
        Error::Config(format!(
            "{target}: {n} validation Different pairs cannot certify a false-accept rate of {rate} \
             (even with none accepted, the 95% upper bound is {:.2e}); it needs at least {needed} \
             — about {} validation pairs (--val-pairs), or choose a larger rate",
            rate_upper_bound(0, n, FAR_CONFIDENCE),
            val_pairs_to_certify(rate),
        ))
    })?;
    let different = different_scores(scores, labels);
    let threshold = threshold_accepting(&different, allowed, scores);
    let accepted = different.partition_point(|&s| s <= threshold);
    Ok((
        threshold,
        Some(FarBound {
            accepted,
            different: n,
            upper: rate_upper_bound(accepted, n, FAR_CONFIDENCE),
        }),
    ))
}

/// The operating point of `target`, chosen on `val` and measured on `test` (the scores and
/// labels of each).
pub fn operating_point(
    target: Target,
    val: (&[f32], &[PairLabel]),
    test: (&[f32], &[PairLabel]),
) -> Result<OperatingPoint> {
    let (threshold, far_bound) = choose(target, val.0, val.1)?;
    Ok(OperatingPoint {
        target,
        threshold,
        val: Rates::at(val.0, val.1, threshold),
        test: Rates::at(test.0, test.1, threshold),
        far_bound,
        test_threshold: target.matching(test.0, test.1),
    })
}

/// [`operating_point`] of every target, refused at the first that cannot be certified.
pub fn operating_points(
    targets: &[Target],
    val: (&[f32], &[PairLabel]),
    test: (&[f32], &[PairLabel]),
) -> Result<Vec<OperatingPoint>> {
    targets
        .iter()
        .map(|&target| operating_point(target, val, test))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use PairLabel::{Different, Same};

    #[test]
    fn the_bound_for_none_accepted_is_the_closed_form() {
        // k = 0: P(X ≤ 0) = (1 − p)^n = α, so p = 1 − α^(1/n): for n = 1000,
        // 1 − 0.05^0.001 = 0.0029912 (the rule of three says ≈ 3/n).
        for n in [1usize, 10, 1000, 5000] {
            let closed = 1.0 - 0.05f64.powf(1.0 / n as f64);
            let bound = rate_upper_bound(0, n, 0.95);
            assert!((bound - closed).abs() < 1e-12, "n={n}: {bound} vs {closed}");
        }
        assert!((rate_upper_bound(0, 1000, 0.95) - 0.0029912).abs() < 1e-7);
    }

    #[test]
    fn the_bound_for_one_in_ten_is_worked_by_hand() {
        // k = 1, n = 10: (1 − p)^10 + 10 p (1 − p)^9 = 0.05. At p = 0.3940:
        // 0.6060^10 = 0.006679, 10 · 0.3940 · 0.6060^9 = 0.043426, sum 0.050105 > 0.05;
        // at p = 0.3942 the sum is 0.049976 < 0.05, so 0.3940 < p < 0.3942 (p = 0.394163).
        let p = rate_upper_bound(1, 10, 0.95);
        let cdf = (1.0 - p).powi(10) + 10.0 * p * (1.0 - p).powi(9);
        assert!((cdf - 0.05).abs() < 1e-12, "P(X ≤ 1) = {cdf} at {p}");
        assert!(p > 0.3940 && p < 0.3942, "{p}");
        // All seen: no bound under 1.
        assert_eq!(rate_upper_bound(10, 10, 0.95), 1.0);
    }

    #[test]
    fn the_pairs_a_far_target_needs_are_the_rule_of_three() {
        // ln 0.05 / ln(1 − 1e-3) = 2994.2…: 2995 pairs certify 1e-3, 2994 do not.
        assert_eq!(pairs_to_certify(1e-3), 2995);
        assert_eq!(max_false_accepts(1e-3, 2994), None);
        assert_eq!(max_false_accepts(1e-3, 2995), Some(0));
        // 5,000 pairs: k = 1 gives 0.000949 ≤ 1e-3, k = 2 gives 0.00126.
        assert_eq!(max_false_accepts(1e-3, 5000), Some(1));
    }

    #[test]
    fn a_far_threshold_accepts_no_more_different_pairs_than_certified() {
        // 3,000 Different pairs at 1.0, 1.1, …; 10 Same pairs at 0.5. 1e-3 allows k = 0:
        // the threshold sits just under the nearest Different pair.
        let mut scores: Vec<f32> = (0..3000).map(|i| 1.0 + i as f32 * 0.1).collect();
        let mut labels = vec![Different; 3000];
        scores.extend([0.5; 10]);
        labels.extend([Same; 10]);
        let (t, bound) = choose(Target::FalseAcceptRate(1e-3), &scores, &labels).unwrap();
        assert_eq!(t, 1.0f32.next_down());
        let bound = bound.unwrap();
        assert_eq!((bound.accepted, bound.different), (0, 3000));
        assert!(bound.upper <= 1e-3);
        let rates = Rates::at(&scores, &labels, t);
        assert_eq!((rates.far, rates.frr), (0.0, 0.0));
        // 2,000 Different pairs cannot certify it: refused, saying how many it needs.
        let err = choose(
            Target::FalseAcceptRate(1e-3),
            &scores[1000..],
            &labels[1000..],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("2000 validation Different pairs cannot certify"),
            "{err}"
        );
        assert!(err.contains("at least 2995"), "{err}");
    }

    #[test]
    fn ties_at_the_first_refused_score_are_refused_with_it() {
        // 3,000 Different pairs; k = 0 allowed; the nearest two tie at 2.0.
        let mut scores = vec![5.0f32; 2998];
        scores.extend([2.0, 2.0]);
        let labels = vec![Different; 3000];
        let (t, bound) = choose(Target::FalseAcceptRate(1e-3), &scores, &labels).unwrap();
        assert!(t < 2.0);
        assert_eq!(bound.unwrap().accepted, 0);
    }

    #[test]
    fn accuracy_and_eer_points_are_the_verification_thresholds() {
        let scores = [0.1f32, 0.2, 0.3, 0.6, 0.7, 0.4, 0.8, 0.9];
        let labels = [
            Same, Same, Same, Same, Different, Different, Different, Different,
        ];
        let points = operating_points(
            &Target::with_far(&[]),
            (&scores, &labels),
            (&scores, &labels),
        )
        .unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].threshold, best_threshold(&scores, &labels));
        assert_eq!(points[1].threshold, equal_error_rate(&scores, &labels).1);
        // At 0.3: one Same pair (0.6) rejected, no Different accepted.
        let at = Rates::at(&scores, &labels, 0.3);
        assert_eq!((at.far, at.frr), (0.0, 0.25));
        assert!(points.iter().all(|p| p.far_bound.is_none()));
    }

    #[test]
    fn targets_parse_and_print_as_typed() {
        assert_eq!(Target::parse("eer").unwrap(), Target::EqualErrorRate);
        assert_eq!(Target::parse("Accuracy").unwrap(), Target::Accuracy);
        assert_eq!(
            Target::parse("far=1e-3").unwrap(),
            Target::FalseAcceptRate(0.001)
        );
        assert_eq!(Target::FalseAcceptRate(0.001).to_string(), "far=0.001");
        assert!(Target::parse("far=2").is_err());
        assert!(
            Target::parse("frr=0.1")
                .unwrap_err()
                .to_string()
                .contains("use accuracy, eer or far=RATE")
        );
    }
}
