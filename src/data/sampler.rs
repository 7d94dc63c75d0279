//! Pair and triplet samplers: which image indices go into each training step (and into
//! the evaluation pairs).
//!
//! The pair sampler reproduces the PyTorch reference's `sample_pairs` in distribution:
//! the anchor is uniform over ALL images (so classes are seen in proportion to their
//! size); with probability `positive_fraction` the partner is uniform over the anchor's
//! class — the anchor itself included, as `rng.choice(by_class[c])` does — otherwise the
//! partner's class is uniform over the OTHER classes and the image uniform within it. The
//! random stream differs from numpy's, so the pairs are not the same ones, only drawn the
//! same way. A sampler that drew "Different" partners uniformly over all other images
//! instead would weight big classes more, which is a different training signal.
//!
//! Classes are label values `0..=max label`, as in the reference; an empty class in that
//! range cannot give a negative and is an error at construction rather than a panic in
//! the middle of a run (it happens with a tiny validation set).
//!
//! Every sampler owns a `StdRng` seeded from the caller's seed, so a run is reproducible
//! from its config. Indices are `u32` because that is what the gather kernel reads.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::dataset::by_class;
use crate::error::{Error, Result};
use crate::ops::loss::PairLabel;

/// A batch of pairs: `(a[i], b[i])` is a pair with label `labels[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairBatch {
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    pub labels: Vec<PairLabel>,
}

impl PairBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A batch of triplets: `anchor[i]` shares a class with `positive[i]`, not with
/// `negative[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TripletBatch {
    pub anchor: Vec<u32>,
    pub positive: Vec<u32>,
    pub negative: Vec<u32>,
}

/// The per-class index the samplers draw from, with the checks both need.
#[derive(Debug, Clone)]
struct Classes {
    labels: Vec<u8>,
    by_class: Vec<Vec<u32>>,
}

impl Classes {
    /// `need_negatives`: every class in `0..=max` must have an image, since a negative's
    /// class is drawn uniformly over the other classes.
    fn new(labels: &[u8], need_negatives: bool, who: &str) -> Result<Self> {
        if labels.is_empty() {
            return Err(Error::Data(format!(
                "{who}: no labels to sample from; the image set is empty"
            )));
        }
        if u32::try_from(labels.len()).is_err() {
            return Err(Error::Data(format!(
                "{who}: {} images is more than u32 indices can address",
                labels.len()
            )));
        }
        let by_class = by_class(labels);
        let present = by_class.iter().filter(|c| !c.is_empty()).count();
        if present < 2 {
            return Err(Error::Data(format!(
                "{who}: the labels hold {present} class(es) among {} images; pairs and triplets \
                 need at least 2 classes. Check that the label file belongs to the images, or \
                 use a larger subset.",
                labels.len()
            )));
        }
        if need_negatives && let Some(c) = by_class.iter().position(|c| c.is_empty()) {
            return Err(Error::Data(format!(
                "{who}: class {c} has no images among these {} (labels run 0 to {}), so it \
                 cannot be drawn as a negative class. Use a larger set (e.g. a larger --val) \
                 or relabel the classes as 0..k without gaps.",
                labels.len(),
                by_class.len() - 1
            )));
        }
        Ok(Classes {
            labels: labels.to_vec(),
            by_class,
        })
    }

    /// A uniformly chosen image index.
    fn anchor(&self, rng: &mut StdRng) -> u32 {
        rng.random_range(0..self.labels.len() as u32)
    }

    /// A uniformly chosen image of class `c`.
    fn member(&self, rng: &mut StdRng, c: usize) -> u32 {
        let members = &self.by_class[c];
        members[rng.random_range(0..members.len())]
    }

    /// A uniformly chosen image of a class other than `c`, the class uniform over the
    /// other classes (the reference's `o = integers(0, k-1); o += o >= c`).
    fn negative(&self, rng: &mut StdRng, c: usize) -> u32 {
        let o = rng.random_range(0..self.by_class.len() - 1);
        self.member(rng, if o >= c { o + 1 } else { o })
    }
}

/// Draws Same / Different pairs the way the reference does (see the module doc).
///
/// Not `Clone`: `StdRng` is not, so two samplers cannot silently share a stream.
#[derive(Debug)]
pub struct PairSampler {
    classes: Classes,
    positive_fraction: f64,
    rng: StdRng,
}

impl PairSampler {
    /// A sampler over `labels` (one class label per image) that makes a pair Same with
    /// probability `positive_fraction`.
    ///
    /// Errors: a fraction outside [0, 1] (or NaN) is [`Error::Config`]; no labels, fewer
    /// than 2 classes, or (when Different pairs can occur) a class in `0..=max label`
    /// with no image is [`Error::Data`].
    pub fn new(labels: &[u8], positive_fraction: f64, seed: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&positive_fraction) {
            return Err(Error::Config(format!(
                "positive fraction {positive_fraction}: the share of Same pairs must lie in \
                 [0, 1] (0.5 gives balanced pairs)"
            )));
        }
        let classes = Classes::new(labels, positive_fraction < 1.0, "pair sampler")?;
        Ok(PairSampler {
            classes,
            positive_fraction,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// `n` fresh pairs.
    pub fn sample(&mut self, n: usize) -> PairBatch {
        let mut batch = PairBatch::default();
        self.sample_into(n, &mut batch);
        batch
    }

    /// Like [`sample`](Self::sample), reusing `batch`'s allocations (its contents are
    /// replaced), so a training loop allocates nothing per step.
    pub fn sample_into(&mut self, n: usize, batch: &mut PairBatch) {
        batch.a.clear();
        batch.b.clear();
        batch.labels.clear();
        let rng = &mut self.rng;
        for _ in 0..n {
            let a = self.classes.anchor(rng);
            let c = self.classes.labels[a as usize] as usize;
            // `random() < p`, as the reference: p = 1 always Same, p = 0 never.
            let same = rng.random::<f64>() < self.positive_fraction;
            let (b, label) = if same {
                (self.classes.member(rng, c), PairLabel::Same)
            } else {
                (self.classes.negative(rng, c), PairLabel::Different)
            };
            batch.a.push(a);
            batch.b.push(b);
            batch.labels.push(label);
        }
    }
}

/// Draws (anchor, positive, negative) triplets.
#[derive(Debug)]
pub struct TripletSampler {
    classes: Classes,
    /// Position of each image within its class's list, to draw a positive other than the
    /// anchor in one draw (no rejection loop).
    rank_in_class: Vec<u32>,
    rng: StdRng,
}

impl TripletSampler {
    /// A sampler over `labels`. Errors ([`Error::Data`]): no labels, fewer than 2
    /// classes, or a class in `0..=max label` with no image.
    pub fn new(labels: &[u8], seed: u64) -> Result<Self> {
        let classes = Classes::new(labels, true, "triplet sampler")?;
        let mut rank_in_class = vec![0u32; labels.len()];
        for members in &classes.by_class {
            for (r, &i) in members.iter().enumerate() {
                rank_in_class[i as usize] = r as u32;
            }
        }
        Ok(TripletSampler {
            classes,
            rank_in_class,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// `n` triplets: the anchor uniform over all images; the positive uniform over the
    /// anchor's class without the anchor (the anchor itself only when it is alone in its
    /// class, since a zero-distance positive teaches nothing); the negative from a
    /// uniformly chosen other class, uniform within it.
    pub fn sample(&mut self, n: usize) -> TripletBatch {
        let mut batch = TripletBatch::default();
        self.sample_into(n, &mut batch);
        batch
    }

    /// Like [`sample`](Self::sample), reusing `batch`'s allocations.
    pub fn sample_into(&mut self, n: usize, batch: &mut TripletBatch) {
        batch.anchor.clear();
        batch.positive.clear();
        batch.negative.clear();
        let rng = &mut self.rng;
        for _ in 0..n {
            let a = self.classes.anchor(rng);
            let c = self.classes.labels[a as usize] as usize;
            let members = &self.classes.by_class[c];
            let p = if members.len() < 2 {
                a
            } else {
                // Uniform over the other len-1 members: draw a rank among them and step
                // over the anchor's own rank.
                let r = rng.random_range(0..members.len() as u32 - 1);
                let r = if r >= self.rank_in_class[a as usize] {
                    r + 1
                } else {
                    r
                };
                members[r as usize]
            };
            batch.anchor.push(a);
            batch.positive.push(p);
            batch.negative.push(self.classes.negative(rng, c));
        }
    }
}

/// The evaluation pairs: `n` pairs drawn by a [`PairSampler`] with positive fraction 0.5
/// (each pair Same with probability 1/2, as the reference's evaluation does), seeded.
///
/// Panics with the sampler's message if the labels cannot give pairs (see
/// [`PairSampler::new`]); [`try_balanced_pairs`] returns the error instead.
pub fn balanced_pairs(labels: &[u8], n: usize, seed: u64) -> PairBatch {
    try_balanced_pairs(labels, n, seed).unwrap_or_else(|e| panic!("balanced_pairs: {e}"))
}

/// [`balanced_pairs`] returning the error (too few classes, an empty class) instead of
/// panicking.
pub fn try_balanced_pairs(labels: &[u8], n: usize, seed: u64) -> Result<PairBatch> {
    Ok(PairSampler::new(labels, 0.5, seed)?.sample(n))
}
