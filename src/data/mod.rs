//! Datasets on the host: IDX files, Fashion-MNIST discovery and splits, pair and triplet samplers.

pub mod dataset;
pub mod idx;
pub mod sampler;
