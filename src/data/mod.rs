//! Datasets on the host: IDX files and image folders, discovery and splits, pair and triplet
//! samplers and the training batches built from them, augmentation parameters.

pub mod augment;
pub mod batches;
pub mod dataset;
#[cfg(feature = "images")]
pub mod folder_cache;
pub mod idx;
#[cfg(feature = "images")]
pub mod image_folder;
pub mod images;
pub mod pairs_file;
pub mod sampler;
