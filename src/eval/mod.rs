//! Evaluation metrics computed from distances or embeddings, and the doctor that reads a run.

pub mod doctor;
pub mod embed;
pub mod embedding_metrics;
pub mod embedding_stats;
pub mod folds;
pub mod oneshot;
pub mod operating_points;
pub mod probe;
pub mod protocol;
pub mod retrieval;
pub mod verification;
