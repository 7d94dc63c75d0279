//! The training sampler of a loss: which images (and labels) make up each step's batch —
//! pairs, triplets, or P×K class-balanced batches for an online miner — as the flat index
//! and code buffers the gather and loss kernels read.

use super::images::by_class;
use super::sampler::{PairBatch, PairSampler, PkBatch, PkSampler, TripletBatch, TripletSampler};
use crate::error::{Error, Result};
use crate::vocab::PairLabel;

/// What a training batch is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Batches {
    /// Pairs, `positive_fraction` of them Same.
    Pairs { positive_fraction: f64 },
    /// Random (anchor, positive, negative) triplets.
    Triplets,
    /// `images` images per batch from P classes × K images (for a miner); P given, or 10
    /// (all classes with ≥ 2 images if fewer).
    ClassBalanced {
        classes_per_batch: Option<usize>,
        images: usize,
    },
}

/// The training sampler of the loss: pairs, triplets, or P×K batches for a miner.
pub enum BatchSampler {
    Pairs(PairSampler, PairBatch),
    Triplets(TripletSampler, TripletBatch),
    ClassBalanced(PkSampler, PkBatch),
}

/// (P, K) of a class-balanced batch of `images`: P given, or the largest count up to 10 of
/// classes with ≥ 2 images that divides the batch (128 images of 10 classes: 8 × 16).
fn pk_shape(
    classes_per_batch: Option<usize>,
    images: usize,
    labels: &[u8],
) -> Result<(usize, usize)> {
    let p = classes_per_batch.unwrap_or_else(|| {
        let eligible = by_class(labels).iter().filter(|c| c.len() >= 2).count();
        let most = eligible.clamp(2, 10);
        (2..=most)
            .rev()
            .find(|&p| images.is_multiple_of(p))
            .unwrap_or(most)
    });
    if !images.is_multiple_of(p) {
        return Err(Error::Config(format!(
            "on P×K batches (a miner, or a loss on class-labelled batches) batch = \
             classes_per_batch × K images: batch {images} is not a multiple of the {p} classes \
             per batch; use a batch of {} or {}, or set --classes-per-batch",
            (images / p).max(1) * p,
            (images / p + 1) * p
        )));
    }
    Ok((p, images / p))
}

impl BatchSampler {
    /// Whether the batches are pairs (whose labels the trainer counts for the doctor).
    pub fn is_pairs(&self) -> bool {
        matches!(self, BatchSampler::Pairs(..))
    }

    /// The sampler of `batches` over images of class `labels`, seeded with `seed`.
    pub fn new(batches: Batches, labels: &[u8], seed: u64) -> Result<Self> {
        Ok(match batches {
            Batches::ClassBalanced {
                classes_per_batch,
                images,
            } => {
                let (p, k) = pk_shape(classes_per_batch, images, labels)?;
                BatchSampler::ClassBalanced(PkSampler::new(labels, p, k, seed)?, PkBatch::default())
            }
            Batches::Triplets => {
                BatchSampler::Triplets(TripletSampler::new(labels, seed)?, TripletBatch::default())
            }
            Batches::Pairs { positive_fraction } => BatchSampler::Pairs(
                PairSampler::new(labels, positive_fraction, seed)?,
                PairBatch::default(),
            ),
        })
    }

    /// The next batch of `n` samples: image indices branch after branch (left images, then
    /// right ones; or anchors, positives, negatives) and the pair label codes.
    pub fn next(&mut self, n: usize, idx: &mut Vec<u32>, codes: &mut Vec<u32>) {
        idx.clear();
        codes.clear();
        match self {
            BatchSampler::Pairs(sampler, batch) => {
                sampler.sample_into(n, batch);
                idx.extend(batch.a.iter().chain(&batch.b));
                codes.extend(batch.labels.iter().map(|l| l.code()));
            }
            BatchSampler::Triplets(sampler, batch) => {
                sampler.sample_into(n, batch);
                idx.extend(
                    batch
                        .anchor
                        .iter()
                        .chain(&batch.positive)
                        .chain(&batch.negative),
                );
                // The triplet loss reads no labels; the buffer still has to hold B codes.
                codes.resize(n, PairLabel::Same.code());
            }
            BatchSampler::ClassBalanced(sampler, batch) => {
                debug_assert_eq!(sampler.batch_len(), n);
                sampler.sample_into(batch);
                idx.extend(&batch.images);
                codes.extend(&batch.classes);
            }
        }
    }
}
