//! Launcher for `shaders/topk.wgsl`: the `k` nearest columns of each row of a distance matrix
//! (k ≤ [`K_MAX`]), ascending by (distance, column), with one column per row optionally
//! skipped. `cpu::topk` is the specification.

use bytemuck::{Pod, Zeroable};

use super::{Shader, expect, expect_f32, expect_rank, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Tensor, grid_1d};

pub const SHADER: Shader = Shader {
    name: "topk",
    source: include_str!("../../shaders/topk.wgsl"),
};

/// Largest `k` (the length of the kernel's private list, `K_MAX` in the shader).
pub const K_MAX: usize = 64;
/// `exclude` value of a row that skips no column.
pub use crate::cpu::topk::NO_EXCLUDE;

const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TopkParams {
    rows: u32,
    cols: u32,
    k: u32,
    _pad: u32,
}

/// `dist [rows, k]`, `index [rows, k]`: the `k` smallest entries of each row of
/// `dm [rows, cols]` and their columns, skipping column `exclude[r]` (u32 `[rows]`) of row r.
/// `k` must be in `1..=K_MAX` and at most the columns a row has left: this checks `k ≤ cols`;
/// a caller that excludes columns keeps `k ≤ cols − 1` (the shader cannot report a short
/// row). Distances must be finite.
pub fn topk_rows(
    gpu: &Gpu,
    dm: &Tensor,
    exclude: &Tensor,
    k: usize,
    dist: &Tensor,
    index: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "topk_rows";
    let &[rows, cols] = expect_rank(OP, "dm", dm, 2)? else {
        unreachable!()
    };
    expect(OP, "exclude", exclude, &[rows], DType::U32)?;
    expect_f32(OP, "dist", dist, &[rows, k])?;
    expect(OP, "index", index, &[rows, k], DType::U32)?;
    if k == 0 || k > K_MAX || k > cols {
        return Err(Error::Shape {
            op: OP,
            detail: format!("k = {k} must be between 1 and {K_MAX} and at most the {cols} columns"),
        });
    }
    to_u32(OP, "rows·cols", rows * cols)?;
    to_u32(OP, "rows·k", rows * k)?;
    let params = TopkParams {
        rows: to_u32(OP, "rows", rows)?,
        cols: to_u32(OP, "cols", cols)?,
        k: k as u32,
        _pad: 0,
    };
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        OP,
        &[],
        &params,
        &[(1, dm), (2, exclude), (3, dist), (4, index)],
        grid_1d(params.rows.div_ceil(WG)),
    )?))
}
