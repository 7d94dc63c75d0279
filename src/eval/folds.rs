//! k-fold verification accuracy, LFW's protocol (Huang et al. 2007): each fold's pairs are
//! scored at the threshold that is best on the other k − 1 folds, and the k accuracies are
//! reported as their mean ± standard deviation (over the folds, as the usual LFW evaluation
//! code computes it: `numpy.std`, divisor k).

use super::verification::{best_threshold, pair_accuracy};
use crate::vocab::PairLabel;

/// Each fold's accuracy and the threshold it was scored at, and their summary.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldAccuracy {
    pub accuracies: Vec<f64>,
    pub thresholds: Vec<f32>,
    pub mean: f64,
    pub std: f64,
}

/// The k-fold accuracy of pairs with `scores` (lower: more alike), `labels` and `folds`
/// (each pair's fold, `0..k`). Every fold must hold pairs.
pub fn k_fold_accuracy(
    scores: &[f32],
    labels: &[PairLabel],
    folds: &[usize],
    k: usize,
) -> FoldAccuracy {
    let (mut accuracies, mut thresholds) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for fold in 0..k {
        let split = |inside: bool| {
            let (s, l): (Vec<f32>, Vec<PairLabel>) = scores
                .iter()
                .zip(labels)
                .zip(folds)
                .filter(|&(_, &f)| (f == fold) == inside)
                .map(|((&s, &l), _)| (s, l))
                .unzip();
            (s, l)
        };
        let (rest, rest_labels) = split(false);
        let (this, this_labels) = split(true);
        let t = best_threshold(&rest, &rest_labels);
        accuracies.push(pair_accuracy(&this, &this_labels, t));
        thresholds.push(t);
    }
    let mean = accuracies.iter().sum::<f64>() / k as f64;
    let std = (accuracies.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / k as f64).sqrt();
    FoldAccuracy {
        accuracies,
        thresholds,
        mean,
        std,
    }
}

/// Folds `0..k` over `n` pairs in order, as even as can be: pair i is in fold i·k / n (for a
/// list with no folds of its own).
pub fn contiguous_folds(n: usize, k: usize) -> Vec<usize> {
    (0..n).map(|i| i * k / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use PairLabel::{Different as D, Same as S};

    #[test]
    fn each_fold_is_scored_at_the_threshold_of_the_others() {
        // Fold 1 separates at some t in (0.25, 0.3), below both of fold 0's scores: fold 0's
        // Same pair at 0.4 is called Different (0.5). Fold 0 separates in (0.4, 0.6), above
        // all of fold 1: its Different pair at 0.3 is called Same (0.75).
        let scores = [0.4, 0.6, 0.1, 0.2, 0.25, 0.3];
        let labels = [S, D, S, S, S, D];
        let folds = [0, 0, 1, 1, 1, 1];
        let r = k_fold_accuracy(&scores, &labels, &folds, 2);
        assert_eq!(r.accuracies, [0.5, 0.75]);
        assert!(
            r.thresholds[0] >= 0.25 && r.thresholds[0] < 0.3,
            "{:?}",
            r.thresholds
        );
        assert!(
            r.thresholds[1] >= 0.4 && r.thresholds[1] < 0.6,
            "{:?}",
            r.thresholds
        );
        assert_eq!((r.mean, r.std), (0.625, 0.125));
    }

    #[test]
    fn contiguous_folds_are_even_and_in_order() {
        assert_eq!(contiguous_folds(7, 3), [0, 0, 0, 1, 1, 2, 2]);
        assert_eq!(contiguous_folds(6, 3), [0, 0, 1, 1, 2, 2]);
    }
}
