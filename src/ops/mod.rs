//! Typed launchers, one module per shader file. A launcher checks shapes and dtypes, then
//! returns a [`Kernel`](crate::gpu::Kernel) ready to record; it never records or submits.
//! Outputs are passed in, so a caller (the tape) owns and reuses every buffer.

pub mod activation;
pub mod conv2d;
pub mod dense;
pub mod distance;
pub mod gather;
pub mod loss;
pub mod mining;
pub mod normalize;
pub mod optim;
pub mod pack;
pub mod pool;
pub mod topk;

use crate::error::{Error, Result};
use crate::gpu::{DType, Tensor};

/// A WGSL source file and the name it is cached under.
#[derive(Debug, Clone, Copy)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// Fails unless `t` is an f32 tensor of exactly `shape`.
pub(crate) fn expect_f32(op: &'static str, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    expect(op, what, t, shape, DType::F32)
}

/// Fails unless `t` has exactly `shape` and `dtype`.
pub(crate) fn expect(
    op: &'static str,
    what: &str,
    t: &Tensor,
    shape: &[usize],
    dtype: DType,
) -> Result<()> {
    if t.shape() != shape || t.dtype() != dtype {
        return Err(Error::Shape {
            op,
            detail: format!(
                "{what} must be a {dtype:?} tensor of shape {shape:?}, got {:?} of shape {:?}",
                t.dtype(),
                t.shape()
            ),
        });
    }
    Ok(())
}

/// Fails unless `t` is an f32 tensor of rank `rank` with no zero dimension; returns its shape.
pub(crate) fn expect_rank<'t>(
    op: &'static str,
    what: &str,
    t: &'t Tensor,
    rank: usize,
) -> Result<&'t [usize]> {
    if t.shape().len() != rank || t.dtype() != DType::F32 || t.is_empty() {
        return Err(Error::Shape {
            op,
            detail: format!(
                "{what} must be a non-empty f32 tensor of rank {rank}, got {:?} of shape {:?}",
                t.dtype(),
                t.shape()
            ),
        });
    }
    Ok(t.shape())
}

/// Converts a size to the u32 the shaders index with, refusing what would overflow.
pub(crate) fn to_u32(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Shape {
        op,
        detail: format!("{what} = {n} exceeds the 32-bit indexing of the kernels"),
    })
}
