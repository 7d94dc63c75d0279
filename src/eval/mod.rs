//! Evaluation metrics computed from distances or embeddings.

pub mod embed;
pub mod protocol;
pub mod verification;
