//! Launchers for `shaders/normalize.wgsl`: row-wise L2 normalisation of `x [B, D]` with
//! PyTorch's `F.normalize` semantics, `y = x / max(‖x‖₂, EPS)`, and its gradient.
//!
//! The forward also writes each row's clamped norm (`norms [B]`); the backward takes `y` and
//! `norms` from it. Where the clamp was active (a row of norm below EPS, e.g. all zeros), the
//! forward is the linear map x/EPS and the backward returns `dy / EPS`, as PyTorch's
//! autograd does; elsewhere `dx = (dy − y·⟨y, dy⟩) / norm`. Row sums are fixed-shape tree
//! reductions in workgroup memory, so both are deterministic.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, expect_rank, to_u32};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel, Shader, Tensor, grid_1d};

pub const SHADER: Shader = Shader::new("normalize", include_str!("../../shaders/normalize.wgsl"));

/// The clamp on the norm (the shader's `EPS`; PyTorch's default).
pub const EPS: f32 = 1e-12;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormalizeParams {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

fn launch(
    gpu: &Gpu,
    entry: &'static str,
    b: usize,
    d: usize,
    bindings: &[(u32, &Tensor)],
) -> Result<Kernel> {
    to_u32(entry, "B·D", b * d)?;
    let params = NormalizeParams {
        rows: to_u32(entry, "B", b)?,
        cols: to_u32(entry, "D", d)?,
        _pad: [0; 2],
    };
    // One workgroup per row.
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        entry,
        &[],
        &params,
        bindings,
        grid_1d(params.rows),
    )?))
}

/// `y [B, D]` = each row of `x [B, D]` divided by `norms [B]` = max(its L2 norm, EPS).
pub fn forward(gpu: &Gpu, x: &Tensor, y: &Tensor, norms: &Tensor) -> Result<Kernel> {
    const OP: &str = "l2_normalize_forward";
    let &[b, d] = expect_rank(OP, "x", x, 2)? else {
        unreachable!()
    };
    expect_f32(OP, "y", y, &[b, d])?;
    expect_f32(OP, "norms", norms, &[b])?;
    launch(gpu, OP, b, d, &[(1, x), (2, y), (3, norms)])
}

/// `dx [B, D]` from the forward's `y [B, D]` and `norms [B]` and the upstream `dy [B, D]`.
pub fn backward(gpu: &Gpu, y: &Tensor, norms: &Tensor, dy: &Tensor, dx: &Tensor) -> Result<Kernel> {
    const OP: &str = "l2_normalize_backward";
    let &[b, d] = expect_rank(OP, "y", y, 2)? else {
        unreachable!()
    };
    expect_f32(OP, "norms", norms, &[b])?;
    expect_f32(OP, "dy", dy, &[b, d])?;
    expect_f32(OP, "dx", dx, &[b, d])?;
    launch(gpu, OP, b, d, &[(4, y), (5, norms), (6, dy), (7, dx)])
}
