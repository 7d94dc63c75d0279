//! Evaluation metrics computed from distances or embeddings.

pub mod embed;
pub mod verification;
