//! The one module that owns wgpu: adapter choice, device, buffers, pipelines, command recording,
//! and the rules that pick a kernel for the adapter and the shape ([`Policy`]).
//!
//! Everything above it speaks in [`Tensor`]s and [`Kernel`]s and never touches an encoder.
//! A [`Kernel`] is a prepared launch (pipelines + bind groups + workgroup counts) built once by
//! a launcher in `ops`; recording it again costs no allocation, which is what lets a training
//! step be one submission of reused kernels.

mod adapter;
mod context;
mod kernel;
mod policy;
mod profiler;
mod recorder;
mod shader;
mod tensor;
mod texels;

pub use adapter::{AdapterSummary, list_adapters};
pub use context::Gpu;
pub use kernel::{Dispatch, Kernel, MAX_WORKGROUPS_PER_DIM, Uniform, grid_1d};
pub(crate) use policy::conv_unrolls_positions;
pub use policy::{AdapterKind, Conv2dKernels, ConvForward, KernelPath, Operands, Policy, TexelOp};
pub use profiler::Profiler;
pub use recorder::Recorder;
pub use shader::{F16Variant, Shader};
pub use tensor::{DType, Tensor};
pub use texels::{TEXEL_ROW, Texels};
