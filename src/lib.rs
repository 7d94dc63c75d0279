//! siamese-gpu: a GPU compute engine for training Siamese (metric-learning) networks.
//!
//! Handwritten WGSL compute shaders (`shaders/`) run on wgpu: Vulkan, Metal, DX12, and Mesa's
//! lavapipe where there is no GPU. [`gpu`] owns the device; [`ops`] holds one typed launcher
//! module per shader file; [`cpu`] is the plain-loop reference of every kernel entry.

pub mod autograd;
#[cfg(feature = "checkpoint")]
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod error;
pub mod eval;
#[cfg(feature = "cli")]
pub mod export;
pub mod files;
#[cfg(feature = "cli")]
pub mod gallery;
pub mod gpu;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
#[cfg(feature = "report")]
pub mod report;
#[cfg(feature = "cli")]
pub mod runs;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "cli")]
pub mod settings;
#[cfg(feature = "cli")]
pub mod sweep;
pub mod train;
pub mod vocab;

pub use error::{Error, Result};
pub use gpu::{DType, Gpu, Kernel, KernelPath, Tensor, TexelOp, Texels};
