//! The Keras Siamese head: |a − b| of the two embeddings → Linear(1) → sigmoid, trained with
//! binary cross-entropy on Same (1) / Different (0) pairs, Adam 1e-3.
//!
//! `cargo run --release --example bce [-- PAIRS]`

mod common;

use siamese_gpu::train::TrainConfig;
use siamese_gpu::vocab::LossKind;

fn main() {
    let cfg = TrainConfig {
        loss: LossKind::Bce,
        pairs: common::pairs_arg(20_000),
        ..TrainConfig::default()
    };
    common::run(cfg);
}
