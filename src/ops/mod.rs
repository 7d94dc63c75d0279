//! Typed launchers, one module per shader file. A launcher checks shapes and dtypes, then
//! returns a [`Kernel`](crate::gpu::Kernel) ready to record; it never records or submits.
//! Outputs are passed in, so a caller (the tape) owns and reuses every buffer.

pub mod activation;
pub mod amp;
pub mod batchnorm;
pub mod conv2d;
pub mod dense;
pub mod distance;
pub mod dropout;
pub mod gather;
pub mod handoff;
pub mod loss;
pub mod mining;
pub mod normalize;
pub mod optim;
pub mod pack;
pub mod photo;
pub mod pool;
pub mod residual;
pub mod similarity_loss;
pub mod topk;

use crate::error::{Error, Result};
use crate::gpu::{DType, Tensor};

/// The precision of a tensor's elements where a kernel takes either: f32 or f16.
pub(crate) fn float_dtype(op: &'static str, what: &str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        DType::F32 | DType::F16 => Ok(t.dtype()),
        other => Err(Error::Shape {
            op,
            detail: format!("{what} must be an f32 or f16 tensor, got {other:?}"),
        }),
    }
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

/// [`expect_rank`] for a tensor of f32 or f16 (a kernel with an f16 variant): its shape and
/// element type.
pub(crate) fn expect_float_rank<'t>(
    op: &'static str,
    what: &str,
    t: &'t Tensor,
    rank: usize,
) -> Result<(&'t [usize], DType)> {
    let dtype = float_dtype(op, what, t)?;
    if t.shape().len() != rank || t.is_empty() {
        return Err(Error::Shape {
            op,
            detail: format!(
                "{what} must be a non-empty tensor of rank {rank}, got shape {:?}",
                t.shape()
            ),
        });
    }
    Ok((t.shape(), dtype))
}

/// Converts a size to the u32 the shaders index with, refusing what would overflow.
pub(crate) fn to_u32(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Shape {
        op,
        detail: format!("{what} = {n} exceeds the 32-bit indexing of the kernels"),
    })
}
