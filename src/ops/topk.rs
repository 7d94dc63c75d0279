//! Launcher for `shaders/topk.wgsl`: the `k` nearest columns of each row of a distance matrix
//! (k ≤ [`K_MAX`]), ascending by (distance, column), with one column per row optionally
//! skipped. `cpu::topk` is the specification.

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_f32, expect_rank, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Shader, Tensor, grid_1d};

pub const SHADER: Shader = Shader::new("topk", include_str!("../../shaders/topk.wgsl"));

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
    col_begin: u32,
    col_end: u32,
    carry: u32,
    _pad: [u32; 2],
}

/// Loop iterations one invocation may run on llvmpipe (lavapipe) before it stops the loop
/// and returns garbage (measured: 65,535, outer and inner loops counted together; a column
/// that `continue`s costs 2).
const LOOP_BUDGET: usize = 65_535;

/// Columns one dispatch scans: each costs at most k + 3 iterations (2 for the column, k + 1
/// for the insertion's shifts), the list's read and write 2k, with a tenth of the budget to
/// spare; at least k + 1, so that the first segment fills the list (one column may be
/// excluded). 5,360 columns at k = 8, 878 at k = 64. Applied on every adapter, so the path
/// the tests check is the one that runs everywhere.
pub fn columns_per_dispatch(k: usize) -> usize {
    ((LOOP_BUDGET * 9 / 10 - 2 * k) / (k + 3)).max(k + 1)
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
    topk_rows_in_segments(gpu, dm, exclude, k, dist, index, columns_per_dispatch(k))
}

/// [`topk_rows`] scanning `segment` columns per dispatch (at least k + 1): one dispatch per
/// segment, each merging into the list the previous one left.
pub fn topk_rows_in_segments(
    gpu: &Gpu,
    dm: &Tensor,
    exclude: &Tensor,
    k: usize,
    dist: &Tensor,
    index: &Tensor,
    segment: usize,
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
    if segment <= k {
        return Err(Error::Shape {
            op: OP,
            detail: format!("segments of {segment} columns cannot fill a list of k = {k}"),
        });
    }
    let rows32 = to_u32(OP, "rows", rows)?;
    let mut dispatches = Vec::new();
    for begin in (0..cols).step_by(segment) {
        let params = TopkParams {
            rows: rows32,
            cols: to_u32(OP, "cols", cols)?,
            k: k as u32,
            col_begin: begin as u32,
            col_end: (begin + segment).min(cols) as u32,
            carry: u32::from(begin > 0),
            _pad: [0; 2],
        };
        dispatches.push(gpu.dispatch(
            &SHADER,
            OP,
            &[],
            &params,
            &[(1, dm), (2, exclude), (3, dist), (4, index)],
            grid_1d(rows32.div_ceil(WG)),
        )?);
    }
    Ok(Kernel::with_scratch(dispatches, Vec::new()))
}
