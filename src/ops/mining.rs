//! Launchers for `shaders/mining.wgsl`: triplet losses mined online from the batch distance
//! matrix `dm [N, N]` and class labels `[N]` (batch-hard, semi-hard, batch-all), and their
//! gradient `ddm [N, N]`. `cpu::mining` is the specification.
//!
//! A forward writes the scalar loss and `stats [4]` = (mined triplets, active triplets,
//! mean d_ap, mean d_an of the mined triplets): [`MiningStats`] reads them. The backward reads
//! the normaliser back from `stats`, so it must run after the forward of the same step (as the
//! tape orders it).

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_f32, expect_rank, to_u32};
use crate::cpu::mining::ROW_STATS;
use crate::error::{Error, Result};
use crate::gpu::{DType, Dispatch, Gpu, Kernel, Shader, Tensor, grid_1d};
use crate::vocab::Miner;

pub const SHADER: Shader = Shader::new("mining", include_str!("../../shaders/mining.wgsl"));

// The kernels behind a `Miner` (the type itself is shared vocabulary).
impl Miner {
    /// The WGSL entries of the forward's first pass and of the backward.
    pub fn entries(self) -> (&'static str, &'static str) {
        match self {
            Miner::BatchAll => ("batch_all_pairs", "batch_all_backward"),
            Miner::BatchHard => ("batch_hard_rows", "batch_hard_backward"),
            Miner::SemiHard => ("semi_hard_pairs", "semi_hard_backward"),
        }
    }
}

/// Invocations per workgroup of every entry but the reduction (`WG` in the shader).
const WG: u32 = 64;

// Binding numbers of the shader (see its header).
const DM: u32 = 1;
const LABELS: u32 = 2;
const DLOSS: u32 = 3;
const DDM: u32 = 4;
const ROWS: u32 = 5;
const LOSS: u32 = 6;
const STATS: u32 = 7;
const CHOICE: u32 = 8;

/// The `stats [4]` of a mined step, read back.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MiningStats {
    /// Triplets the miner selected (batch-hard: anchors; semi-hard: anchor-positive pairs;
    /// batch-all: every valid triplet).
    pub mined: f32,
    /// Of those, the ones still violating the margin (`d_ap − d_an + m > 0`).
    pub active: f32,
    pub mean_d_ap: f32,
    pub mean_d_an: f32,
}

impl MiningStats {
    pub fn from_slice(s: &[f32]) -> MiningStats {
        MiningStats {
            mined: s[0],
            active: s[1],
            mean_d_ap: s[2],
            mean_d_an: s[3],
        }
    }

    /// The fraction of mined triplets still violating the margin (0 when none was mined).
    pub fn active_fraction(&self) -> f32 {
        if self.mined > 0.0 {
            self.active / self.mined
        } else {
            0.0
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MiningParams {
    n: u32,
    margin: f32,
    by_active: u32,
    rows_len: u32,
}

/// Checks `dm [N, N]` and `labels [N]` u32 and the margin; returns the shader's parameters.
fn params(
    op: &'static str,
    miner: Miner,
    dm: &Tensor,
    labels: &Tensor,
    margin: f32,
) -> Result<MiningParams> {
    let &[n, cols] = expect_rank(op, "dm", dm, 2)? else {
        unreachable!()
    };
    if n != cols {
        return Err(Error::Shape {
            op,
            detail: format!("dm must be a square [N, N] distance matrix, got [{n}, {cols}]"),
        });
    }
    expect(op, "labels", labels, &[n], DType::U32)?;
    if !margin.is_finite() {
        return Err(Error::Shape {
            op,
            detail: format!("margin must be a finite number, got {margin}"),
        });
    }
    to_u32(op, "N·N·5", n * n * ROW_STATS)?;
    Ok(MiningParams {
        n: to_u32(op, "N", n)?,
        margin,
        by_active: miner.averages_active() as u32,
        rows_len: miner.partial_rows(n) as u32,
    })
}

/// One invocation per anchor (`invocations` = N) or per element of dm (N²).
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    p: &MiningParams,
    bindings: &[(u32, &Tensor)],
    invocations: u32,
) -> Result<Dispatch> {
    gpu.dispatch(
        &SHADER,
        entry,
        &[],
        p,
        bindings,
        grid_1d(invocations.div_ceil(WG)),
    )
}

/// `loss [1]` and `stats [4]` of the triplets `miner` selects from `dm [N, N]` with class
/// `labels [N]` (u32) and margin `margin`: a pass of partial sums into a scratch `[R, 5]`
/// (R = [`Miner::partial_rows`]), then one workgroup's reduction.
pub fn forward(
    gpu: &Gpu,
    miner: Miner,
    dm: &Tensor,
    labels: &Tensor,
    margin: f32,
    loss: &Tensor,
    stats: &Tensor,
) -> Result<Kernel> {
    let op = miner.entries().0;
    let p = params(op, miner, dm, labels, margin)?;
    expect_f32(op, "loss", loss, &[1])?;
    expect_f32(op, "stats", stats, &[4])?;
    let rows = gpu.zeros(&[p.rows_len as usize, ROW_STATS], DType::F32)?;
    let pass = launch(
        gpu,
        op,
        &p,
        &[(DM, dm), (LABELS, labels), (ROWS, &rows)],
        p.rows_len,
    )?;
    let reduce = reduce_dispatch(gpu, &p, &rows, loss, stats)?;
    Ok(Kernel::with_scratch(vec![pass, reduce], vec![rows]))
}

fn reduce_dispatch(
    gpu: &Gpu,
    p: &MiningParams,
    rows: &Tensor,
    loss: &Tensor,
    stats: &Tensor,
) -> Result<Dispatch> {
    // One workgroup whatever N: the fixed summation shape is what makes the loss deterministic.
    gpu.dispatch(
        &SHADER,
        "mining_reduce",
        &[],
        p,
        &[(ROWS, rows), (LOSS, loss), (STATS, stats)],
        [1, 1, 1],
    )
}

/// The first pass alone: `rows [R, 5]` = (Σ hinge, mined, active, Σ d_ap, Σ d_an) of each
/// anchor (batch-hard, R = N) or (anchor, positive) slot a·N + j (R = N²; zeros where j is
/// not a positive of a); the first dispatch of [`forward`], exposed for testing.
pub fn rows(
    gpu: &Gpu,
    miner: Miner,
    dm: &Tensor,
    labels: &Tensor,
    margin: f32,
    rows: &Tensor,
) -> Result<Kernel> {
    let op = miner.entries().0;
    let p = params(op, miner, dm, labels, margin)?;
    expect_f32(op, "rows", rows, &[p.rows_len as usize, ROW_STATS])?;
    Ok(Kernel::single(launch(
        gpu,
        op,
        &p,
        &[(DM, dm), (LABELS, labels), (ROWS, rows)],
        p.rows_len,
    )?))
}

/// The reduction alone: `loss [1]`, `stats [4]` from `rows [R, 5]` (the second dispatch of
/// [`forward`], exposed for testing).
pub fn reduce(
    gpu: &Gpu,
    miner: Miner,
    rows: &Tensor,
    loss: &Tensor,
    stats: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "mining_reduce";
    let r = expect_rank(OP, "rows", rows, 2)?[0];
    expect_f32(OP, "rows", rows, &[r, ROW_STATS])?;
    expect_f32(OP, "loss", loss, &[1])?;
    expect_f32(OP, "stats", stats, &[4])?;
    let p = MiningParams {
        n: 0, // the reduction reads rows only
        margin: 0.0,
        by_active: miner.averages_active() as u32,
        rows_len: to_u32(OP, "R", r)?,
    };
    Ok(Kernel::single(reduce_dispatch(gpu, &p, rows, loss, stats)?))
}

/// `ddm [N, N] = dloss·∂loss/∂dm`, given the forward's `stats` (its normaliser) and the
/// upstream `dloss [1]`. Batch-hard writes each anchor's row with one invocation; semi-hard
/// (after a dispatch that records each active pair's negative in a scratch `[N, N]`) and
/// batch-all write one element per invocation.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    miner: Miner,
    dm: &Tensor,
    labels: &Tensor,
    margin: f32,
    stats: &Tensor,
    dloss: &Tensor,
    ddm: &Tensor,
) -> Result<Kernel> {
    let op = miner.entries().1;
    let p = params(op, miner, dm, labels, margin)?;
    expect_f32(op, "stats", stats, &[4])?;
    expect_f32(op, "dloss", dloss, &[1])?;
    expect_f32(op, "ddm", ddm, dm.shape())?;
    let common = [
        (DM, dm),
        (LABELS, labels),
        (DLOSS, dloss),
        (STATS, stats),
        (DDM, ddm),
    ];
    match miner {
        Miner::BatchHard => Ok(Kernel::single(launch(gpu, op, &p, &common, p.n)?)),
        Miner::BatchAll => Ok(Kernel::single(launch(gpu, op, &p, &common, p.n * p.n)?)),
        Miner::SemiHard => {
            let choice = gpu.zeros(&[p.n as usize, p.n as usize], DType::U32)?;
            let choose = launch(
                gpu,
                "semi_hard_choices",
                &p,
                &[(DM, dm), (LABELS, labels), (CHOICE, &choice)],
                p.n * p.n,
            )?;
            // The gradient reads the choices, not dm.
            let bindings = [
                (LABELS, labels),
                (DLOSS, dloss),
                (STATS, stats),
                (DDM, ddm),
                (CHOICE, &choice),
            ];
            let grad = launch(gpu, op, &p, &bindings, p.n * p.n)?;
            Ok(Kernel::with_scratch(vec![choose, grad], vec![choice]))
        }
    }
}
