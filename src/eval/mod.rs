//! Evaluation metrics computed from distances or embeddings.

pub mod verification;
