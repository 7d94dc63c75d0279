//! Evaluation metrics computed from distances or embeddings, and the doctor that reads a run.

pub mod doctor;
pub mod embed;
pub mod embedding_stats;
pub mod probe;
pub mod protocol;
pub mod verification;
