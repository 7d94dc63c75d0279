//! The kernel tests, one binary: each module checks one shader family's entry points against
//! the CPU references of `siamese_gpu::cpu` (and the gradients against f64 finite
//! differences) over a declared matrix of kernel path × element type × shape; two more check
//! compositions of kernels the same way; `coverage` checks that every `@compute` entry point
//! is named by a test. The harness they share is `common`.

mod common;
mod coverage;

mod activation;
mod amp;
mod batchnorm;
mod conv2d;
mod dense;
mod distance;
mod dropout;
mod gather;
mod loss;
mod mining;
mod normalize;
mod optim;
mod pack;
mod photo;
mod pool;
mod residual;
mod similarity_loss;
mod topk;

/// The tape on every kernel path against the composed CPU references.
mod model_gradient;
/// Retrieval metrics through the pairwise distance and top-k kernels, in chunks.
mod retrieval;
