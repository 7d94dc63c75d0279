//! Triplet loss (margin 0.2) on L2-normalised embeddings of the reference tower, with
//! random triplets (anchor, a positive of its class, a negative of another), Adam 1e-3.
//!
//! `cargo run --release --example triplet [-- TRIPLETS]`

mod common;

use siamese_gpu::train::TrainConfig;
use siamese_gpu::vocab::LossKind;

fn main() {
    let cfg = TrainConfig {
        loss: LossKind::Triplet,
        margin: 0.2,
        normalize: true,
        pairs: common::pairs_arg(20_000),
        ..TrainConfig::default()
    };
    common::run(cfg);
}
