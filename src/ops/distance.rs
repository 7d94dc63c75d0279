//! Launchers for `shaders/distance.wgsl`: distances between paired rows `a [B, D]`,
//! `b [B, D]` (Euclidean, squared Euclidean, L1, cosine → `d [B]`), the elementwise
//! `|a − b| [B, D]` of the Keras Siamese head, and the pairwise matrix `Dm [B1, B2]` between
//! the rows of `A [B1, D]` and `B [B2, D]` for mining and retrieval; forward and backward with
//! respect to both inputs. `cpu::distance` is the specification.
//!
//! Every backward *writes* (does not accumulate into) `da` and `db`; `da`, `db` and the inputs
//! must be distinct tensors.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, expect_rank, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, Dispatch, Gpu, Kernel, Shader, Tensor, Texels, grid_1d};
use crate::vocab::{Distance, PairwiseMetric};

pub const SHADER: Shader = Shader::new("distance", include_str!("../../shaders/distance.wgsl"));

// The kernels behind a `Distance` (the type itself is shared vocabulary).
impl Distance {
    /// The WGSL entry points of the forward and the backward.
    pub fn entries(self) -> (&'static str, &'static str) {
        match self {
            Distance::Euclidean => ("euclidean_forward", "euclidean_backward"),
            Distance::SquaredEuclidean => {
                ("squared_euclidean_forward", "squared_euclidean_backward")
            }
            Distance::L1 => ("l1_forward", "l1_backward"),
            Distance::Cosine => ("cosine_forward", "cosine_backward"),
        }
    }
}

/// Invocations per workgroup of the 1-D entries (`WG` in the shader).
const WG: u32 = 64;
/// Pairwise forward: invocations per workgroup along Dm's columns and rows, each computing a
/// `BLOCK × BLOCK` block of Dm.
const WG_COLS: u32 = 8;
const WG_ROWS: u32 = 8;
const BLOCK: u32 = 4;

// Binding numbers of the shader (see its header).
const A: u32 = 1;
const B: u32 = 2;
const FWD: u32 = 3;
const GRAD: u32 = 4;
const NORM_A: u32 = 5;
const NORM_B: u32 = 6;
const OUT: u32 = 7;
const OUT2: u32 = 8;
const TEX_A: u32 = 9;
const TEX_B: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DistanceParams {
    /// B (paired) or B1 (pairwise).
    rows: u32,
    /// B (paired) or B2 (pairwise).
    rows_b: u32,
    /// D.
    dim: u32,
    _pad: u32,
}

/// Checks `a [B, D]` and `b [B, D]`; returns (B, D).
fn paired_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(usize, usize)> {
    let &[rows, dim] = expect_rank(op, "a", a, 2)? else {
        unreachable!()
    };
    expect_f32(op, "b", b, &[rows, dim])?;
    Ok((rows, dim))
}

/// Checks `a [B1, D]` and `b [B2, D]`; returns (B1, B2, D).
fn pairwise_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(usize, usize, usize)> {
    let &[b1, dim] = expect_rank(op, "a", a, 2)? else {
        unreachable!()
    };
    let b2 = expect_rank(op, "b", b, 2)?[0];
    expect_f32(op, "b", b, &[b2, dim])?;
    Ok((b1, b2, dim))
}

fn params(op: &'static str, rows: usize, rows_b: usize, dim: usize) -> Result<DistanceParams> {
    // The shaders index elements as u32: refuse what would overflow, not wrap.
    to_u32(op, "rows·D", rows * dim)?;
    to_u32(op, "rows_b·D", rows_b * dim)?;
    to_u32(op, "rows·rows_b", rows * rows_b)?;
    to_u32(op, "(rows + rows_b)·D", (rows + rows_b) * dim)?;
    Ok(DistanceParams {
        rows: to_u32(op, "rows", rows)?,
        rows_b: to_u32(op, "rows_b", rows_b)?,
        dim: to_u32(op, "D", dim)?,
        _pad: 0,
    })
}

/// One dispatch of a 1-D entry over `invocations` invocations.
fn launch_1d(
    gpu: &Gpu,
    entry: &'static str,
    params: &DistanceParams,
    bindings: &[(u32, &Tensor)],
    invocations: usize,
) -> Result<Dispatch> {
    let invocations = to_u32(entry, "invocations", invocations)?;
    gpu.dispatch(
        &SHADER,
        entry,
        &[],
        params,
        bindings,
        grid_1d(invocations.div_ceil(WG)),
    )
}

/// `d [B]` = `kind`(a [B, D], b [B, D]) row by row.
pub fn forward(gpu: &Gpu, kind: Distance, a: &Tensor, b: &Tensor, d: &Tensor) -> Result<Kernel> {
    let op = kind.entries().0;
    let (rows, dim) = paired_shape(op, a, b)?;
    expect_f32(op, "d", d, &[rows])?;
    let params = params(op, rows, rows, dim)?;
    Ok(Kernel::single(launch_1d(
        gpu,
        op,
        &params,
        &[(A, a), (B, b), (OUT, d)],
        rows,
    )?))
}

/// Gradients `da [B, D]`, `db [B, D]` of `L = Σ_i dd[i]·d[i]`, given the upstream `dd [B]`.
/// `d [B]` is the forward output: only [`Distance::Euclidean`] reads it (its gradient is
/// `(a − b)/d`), the others recompute what they need, but its shape is checked for all so
/// that a caller can pass the same tensors whatever the kind.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    kind: Distance,
    a: &Tensor,
    b: &Tensor,
    d: &Tensor,
    dd: &Tensor,
    da: &Tensor,
    db: &Tensor,
) -> Result<Kernel> {
    let op = kind.entries().1;
    let (rows, dim) = paired_shape(op, a, b)?;
    expect_f32(op, "d", d, &[rows])?;
    expect_f32(op, "dd", dd, &[rows])?;
    expect_f32(op, "da", da, &[rows, dim])?;
    expect_f32(op, "db", db, &[rows, dim])?;
    let params = params(op, rows, rows, dim)?;
    let dispatch = match kind {
        Distance::Euclidean => launch_1d(
            gpu,
            op,
            &params,
            &[(A, a), (B, b), (FWD, d), (GRAD, dd), (OUT, da), (OUT2, db)],
            rows * dim,
        )?,
        Distance::SquaredEuclidean | Distance::L1 => launch_1d(
            gpu,
            op,
            &params,
            &[(A, a), (B, b), (GRAD, dd), (OUT, da), (OUT2, db)],
            rows * dim,
        )?,
        // One invocation per row: the row's dot product and norms come before any element.
        Distance::Cosine => launch_1d(
            gpu,
            op,
            &params,
            &[(A, a), (B, b), (GRAD, dd), (OUT, da), (OUT2, db)],
            rows,
        )?,
    };
    Ok(Kernel::single(dispatch))
}

/// `y [B, D] = |a − b|` elementwise (the Keras Siamese head's merge, fed to Dense(1)).
pub fn abs_diff_forward(gpu: &Gpu, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    const OP: &str = "abs_diff_forward";
    let (rows, dim) = paired_shape(OP, a, b)?;
    expect_f32(OP, "y", y, &[rows, dim])?;
    let params = params(OP, rows, rows, dim)?;
    Ok(Kernel::single(launch_1d(
        gpu,
        OP,
        &params,
        &[(A, a), (B, b), (OUT, y)],
        rows * dim,
    )?))
}

/// `da = dy ⊙ sign(a − b)`, `db = −da` (0 where a = b), all `[B, D]`.
pub fn abs_diff_backward(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
    da: &Tensor,
    db: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "abs_diff_backward";
    let (rows, dim) = paired_shape(OP, a, b)?;
    expect_f32(OP, "dy", dy, &[rows, dim])?;
    expect_f32(OP, "da", da, &[rows, dim])?;
    expect_f32(OP, "db", db, &[rows, dim])?;
    let params = params(OP, rows, rows, dim)?;
    Ok(Kernel::single(launch_1d(
        gpu,
        OP,
        &params,
        &[(A, a), (B, b), (GRAD, dy), (OUT, da), (OUT2, db)],
        rows * dim,
    )?))
}

/// `dm [B1, B2]`: `metric` between every row of `a [B1, D]` and every row of `b [B2, D]`.
/// Each invocation computes a 4×4 block of `dm`. For retrieval-size matrices (10k × 55k is
/// 2.2 GB) the caller splits `a` into chunks of rows that fit the storage-binding limit.
pub fn pairwise_forward(
    gpu: &Gpu,
    metric: PairwiseMetric,
    a: &Tensor,
    b: &Tensor,
    dm: &Tensor,
) -> Result<Kernel> {
    let op = match metric {
        PairwiseMetric::Euclidean => "pairwise_euclidean_forward",
        PairwiseMetric::Cosine => "pairwise_cosine_forward",
    };
    let (b1, b2, dim) = pairwise_shape(op, a, b)?;
    expect_f32(op, "dm", dm, &[b1, b2])?;
    let params = params(op, b1, b2, dim)?;
    let groups = [
        params.rows_b.div_ceil(BLOCK * WG_COLS),
        params.rows.div_ceil(BLOCK * WG_ROWS),
        1,
    ];
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if groups[0] > max || groups[1] > max {
        return Err(Error::Shape {
            op,
            detail: format!(
                "a {b1}×{b2} matrix needs {}×{} workgroups, over this device's {max} per \
                 dimension; split a or b into chunks of at most {} rows",
                groups[1],
                groups[0],
                max as u64 * (BLOCK * WG_ROWS) as u64
            ),
        });
    }
    let constants = [("WG_COLS", WG_COLS as f64), ("WG_ROWS", WG_ROWS as f64)];
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        op,
        &constants,
        &params,
        &[(A, a), (B, b), (OUT, dm)],
        groups,
    )?))
}

/// [`pairwise_forward`] through the texel kernels: `a` and `b` packed by
/// [`pack::rows4`](super::pack::rows4) (rows of ⌈D/4⌉ texels) from `[B1, D]` and `[B2, D]`.
/// Each invocation computes an 8×8 block of `dm`; several times faster on lavapipe, where
/// texel fetches are vectorised and storage loads are not. Same definitions; the sums run in
/// another order (by fours), so results differ from the storage kernel's within rounding.
pub fn pairwise_forward_tex(
    gpu: &Gpu,
    metric: PairwiseMetric,
    a: &Texels,
    b: &Texels,
    (b1, b2, dim): (usize, usize, usize),
    dm: &Tensor,
) -> Result<Kernel> {
    let op = match metric {
        PairwiseMetric::Euclidean => "pairwise_euclidean_forward_tex",
        PairwiseMetric::Cosine => "pairwise_cosine_forward_tex",
    };
    expect_f32(op, "dm", dm, &[b1, b2])?;
    let texels = dim.div_ceil(4);
    if dim == 0 || a.len() != b1 * texels || b.len() != b2 * texels {
        return Err(Error::Shape {
            op,
            detail: format!(
                "a and b must be {b1}×{texels} and {b2}×{texels} texels (rows of D = {dim} by fours), got {} and {}",
                a.len(),
                b.len()
            ),
        });
    }
    let mut params = params(op, b1, b2, dim)?;
    params.dim = to_u32(op, "⌈D/4⌉", texels)?;
    let invocations = to_u32(op, "blocks", b1.div_ceil(8) * b2.div_ceil(8))?;
    Ok(Kernel::single(gpu.dispatch_with_texels(
        &SHADER,
        op,
        &[],
        &params,
        &[(OUT, dm)],
        &[(TEX_A, a), (TEX_B, b)],
        grid_1d(invocations.div_ceil(WG)),
    )?))
}

/// Gradients `da [B1, D]`, `db [B2, D]` of `L = Σ ddm ⊙ dm`, given the forward output
/// `dm [B1, B2]` and the upstream `ddm [B1, B2]`. Each output row gathers over the other set
/// (no atomics, deterministic). Cosine first computes the clamped row norms into two scratch
/// buffers the kernel owns (a second dispatch, `cosine_norms`).
#[allow(clippy::too_many_arguments)]
pub fn pairwise_backward(
    gpu: &Gpu,
    metric: PairwiseMetric,
    a: &Tensor,
    b: &Tensor,
    dm: &Tensor,
    ddm: &Tensor,
    da: &Tensor,
    db: &Tensor,
) -> Result<Kernel> {
    let op = match metric {
        PairwiseMetric::Euclidean => "pairwise_euclidean_backward",
        PairwiseMetric::Cosine => "pairwise_cosine_backward",
    };
    let (b1, b2, dim) = pairwise_shape(op, a, b)?;
    expect_f32(op, "dm", dm, &[b1, b2])?;
    expect_f32(op, "ddm", ddm, &[b1, b2])?;
    expect_f32(op, "da", da, &[b1, dim])?;
    expect_f32(op, "db", db, &[b2, dim])?;
    let params = params(op, b1, b2, dim)?;
    // One invocation per 4 columns of one output row.
    let invocations = (b1 + b2) * dim.div_ceil(4);
    match metric {
        PairwiseMetric::Euclidean => Ok(Kernel::single(launch_1d(
            gpu,
            op,
            &params,
            &[
                (A, a),
                (B, b),
                (FWD, dm),
                (GRAD, ddm),
                (OUT, da),
                (OUT2, db),
            ],
            invocations,
        )?)),
        PairwiseMetric::Cosine => {
            let na = gpu.zeros(&[b1], DType::F32)?;
            let nb = gpu.zeros(&[b2], DType::F32)?;
            let norms = norms_dispatch(gpu, &params, a, b, &na, &nb)?;
            let backward = launch_1d(
                gpu,
                op,
                &params,
                &[
                    (A, a),
                    (B, b),
                    (FWD, dm),
                    (GRAD, ddm),
                    (NORM_A, &na),
                    (NORM_B, &nb),
                    (OUT, da),
                    (OUT2, db),
                ],
                invocations,
            )?;
            Ok(Kernel::with_scratch(vec![norms, backward], vec![na, nb]))
        }
    }
}

fn norms_dispatch(
    gpu: &Gpu,
    params: &DistanceParams,
    a: &Tensor,
    b: &Tensor,
    na: &Tensor,
    nb: &Tensor,
) -> Result<Dispatch> {
    launch_1d(
        gpu,
        "cosine_norms",
        params,
        &[(A, a), (B, b), (OUT, na), (OUT2, nb)],
        (params.rows + params.rows_b) as usize,
    )
}

/// `na [B1]`, `nb [B2]`: `max(‖row‖, 1e-8)` of every row of `a [B1, D]` and `b [B2, D]`
/// (the first dispatch of the pairwise cosine backward, exposed for testing and reuse).
pub fn cosine_norms(gpu: &Gpu, a: &Tensor, b: &Tensor, na: &Tensor, nb: &Tensor) -> Result<Kernel> {
    const OP: &str = "cosine_norms";
    let (b1, b2, dim) = pairwise_shape(OP, a, b)?;
    expect_f32(OP, "na", na, &[b1])?;
    expect_f32(OP, "nb", nb, &[b2])?;
    let params = params(OP, b1, b2, dim)?;
    Ok(Kernel::single(norms_dispatch(gpu, &params, a, b, na, nb)?))
}
