//! Evaluation metrics computed from distances or embeddings.

pub mod embed;
pub mod oneshot;
pub mod protocol;
pub mod retrieval;
pub mod verification;
