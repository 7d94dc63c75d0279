//! Pair, triplet and P×K samplers: which image indices go into each training step (and into
//! the evaluation pairs). The P×K sampler feeds online mining: P classes × K images per batch,
//! so that every anchor has positives and negatives among the others.
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

use super::images::by_class;
use crate::error::{Error, Result};
use crate::vocab::PairLabel;

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

/// A class-balanced batch for online mining: `P × K` image indices, K of each of P classes
/// (class after class), and each image's class id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkBatch {
    pub images: Vec<u32>,
    pub classes: Vec<u32>,
}

/// Draws P×K batches: P classes uniformly without replacement among the classes with at
/// least 2 images (a class of one cannot give a positive), then K images of each, without
/// replacement when the class has K or more (else with replacement, so small classes still
/// fill their K slots).
#[derive(Debug)]
pub struct PkSampler {
    /// Images of each class, permuted in place by the partial Fisher–Yates draws: a draw
    /// from any order is uniform, and nothing is allocated per batch.
    pools: Vec<Vec<u32>>,
    /// Class ids of the classes with ≥ 2 images, permuted in place likewise.
    eligible: Vec<u32>,
    p: usize,
    k: usize,
    rng: StdRng,
}

impl PkSampler {
    /// A sampler over `labels` of `p` classes × `k` images per batch. Errors
    /// ([`Error::Config`]): `p < 2` (no negatives) or `k < 2` (no positives); ([`Error::Data`]):
    /// fewer than `p` classes with at least 2 images.
    pub fn new(labels: &[u8], p: usize, k: usize, seed: u64) -> Result<Self> {
        if p < 2 || k < 2 {
            return Err(Error::Config(format!(
                "a P×K batch needs P ≥ 2 classes (for negatives) and K ≥ 2 images per class (for \
                 positives), got P = {p}, K = {k}; batch = P × K images"
            )));
        }
        if u32::try_from(labels.len()).is_err() {
            return Err(Error::Data(format!(
                "P×K sampler: {} images is more than u32 indices can address",
                labels.len()
            )));
        }
        let pools = by_class(labels);
        let eligible: Vec<u32> = (0..pools.len() as u32)
            .filter(|&c| pools[c as usize].len() >= 2)
            .collect();
        if eligible.len() < p {
            return Err(Error::Data(format!(
                "P×K sampler: {p} classes per batch were asked for, but only {} of the {} \
                 classes among these {} images have 2 or more images; lower --classes-per-batch \
                 to at most {} (and keep batch = classes-per-batch × K)",
                eligible.len(),
                pools.iter().filter(|c| !c.is_empty()).count(),
                labels.len(),
                eligible.len()
            )));
        }
        Ok(PkSampler {
            pools,
            eligible,
            p,
            k,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// Images per batch, P × K.
    pub fn batch_len(&self) -> usize {
        self.p * self.k
    }

    pub fn sample(&mut self) -> PkBatch {
        let mut batch = PkBatch::default();
        self.sample_into(&mut batch);
        batch
    }

    /// Like [`sample`](Self::sample), reusing `batch`'s allocations.
    pub fn sample_into(&mut self, batch: &mut PkBatch) {
        batch.images.clear();
        batch.classes.clear();
        let rng = &mut self.rng;
        for i in 0..self.p {
            // Partial Fisher–Yates: position i gets a uniform class among those not yet drawn.
            let j = rng.random_range(i..self.eligible.len());
            self.eligible.swap(i, j);
            let c = self.eligible[i];
            let pool = &mut self.pools[c as usize];
            for r in 0..self.k {
                let image = if pool.len() >= self.k {
                    let j = rng.random_range(r..pool.len());
                    pool.swap(r, j);
                    pool[r]
                } else {
                    pool[rng.random_range(0..pool.len())]
                };
                batch.images.push(image);
                batch.classes.push(c);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// 10 classes of 20 images, then class 10 with 3 images and class 11 with 1.
    fn labels() -> Vec<u8> {
        let mut l: Vec<u8> = (0..200).map(|i| (i % 10) as u8).collect();
        l.extend([10, 10, 10, 11]);
        l
    }

    #[test]
    fn pk_batches_hold_p_distinct_classes_of_k_images() {
        let l = labels();
        let mut s = PkSampler::new(&l, 5, 4, 7).unwrap();
        assert_eq!(s.batch_len(), 20);
        for _ in 0..200 {
            let b = s.sample();
            assert_eq!(b.images.len(), 20);
            let classes: HashSet<u32> = b.classes.iter().copied().collect();
            assert_eq!(classes.len(), 5, "P distinct classes: {:?}", b.classes);
            assert!(
                !classes.contains(&11),
                "a class of one image cannot give a positive"
            );
            for (img, c) in b.images.iter().zip(&b.classes) {
                assert_eq!(
                    l[*img as usize] as u32, *c,
                    "image {img} is not of class {c}"
                );
            }
            for chunk in b.images.chunks(4).zip(b.classes.chunks(4)) {
                assert!(
                    chunk.1.iter().all(|&c| c == chunk.1[0]),
                    "K images per class, in a block"
                );
                let distinct: HashSet<u32> = chunk.0.iter().copied().collect();
                // Class 10 has 3 < K images: drawn with replacement; the others without.
                if chunk.1[0] != 10 {
                    assert_eq!(distinct.len(), 4, "without replacement: {:?}", chunk.0);
                }
            }
        }
    }

    #[test]
    fn pk_sampling_is_seeded() {
        let l = labels();
        let draw = |seed| {
            let mut s = PkSampler::new(&l, 3, 2, seed).unwrap();
            (0..5).map(|_| s.sample()).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn pk_classes_are_uniform() {
        // 11 eligible classes, 3 per batch: each is drawn in 3/11 of the batches.
        let l = labels();
        let mut s = PkSampler::new(&l, 3, 2, 3).unwrap();
        let batches = 11_000;
        let mut seen: HashMap<u32, usize> = HashMap::new();
        for _ in 0..batches {
            for c in s.sample().classes.iter().step_by(2) {
                *seen.entry(*c).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), 11);
        let expect = batches as f64 * 3.0 / 11.0; // 3000; binomial sd ≈ 47
        for (c, n) in seen {
            assert!(
                (n as f64 - expect).abs() < 250.0,
                "class {c} drawn {n} times, expected ≈ {expect}"
            );
        }
    }

    #[test]
    fn pk_refusals_say_what_is_wrong() {
        let l = labels();
        let err = PkSampler::new(&l, 12, 2, 0).unwrap_err().to_string();
        assert!(err.contains("only 11 of the 12 classes"), "{err}");
        assert!(err.contains("--classes-per-batch"), "{err}");
        let err = PkSampler::new(&l, 4, 1, 0).unwrap_err().to_string();
        assert!(err.contains("K ≥ 2"), "{err}");
        let err = PkSampler::new(&l, 1, 4, 0).unwrap_err().to_string();
        assert!(err.contains("P ≥ 2"), "{err}");
    }
}
