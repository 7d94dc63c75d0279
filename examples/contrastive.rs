//! The reference recipe: contrastive loss (margin 1) on the Euclidean distance between the
//! two embeddings of the reference tower, Adam 1e-3, batches of 128 pairs, Fashion-MNIST.
//!
//! `cargo run --release --example contrastive [-- PAIRS]`

mod common;

use siamese_gpu::train::TrainConfig;

fn main() {
    let cfg = TrainConfig {
        pairs: common::pairs_arg(20_000),
        ..TrainConfig::default()
    };
    common::run(cfg);
}
