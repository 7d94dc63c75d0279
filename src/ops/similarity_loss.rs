//! Launchers for `shaders/similarity_loss.wgsl`: the losses on the cosine similarities
//! between a batch and a reference set (ArcFace, CosFace and Sub-center ArcFace over class
//! weights, ProxyAnchor over proxies, SupCon, NT-Xent and Multi-Similarity over the batch),
//! and their gradient with respect to the cosine-distance matrix. `cpu::similarity_loss` is
//! the specification.
//!
//! A forward is two dispatches: a pass that writes one row of partial sums per batch row
//! (per proxy for ProxyAnchor) into `rows`, then one workgroup's reduction into `loss [1]`
//! and `stats [4]`. The backward reads both `rows` and `stats`, so the caller owns `rows`
//! and passes it to both; the backward must run after the forward of the same step (as the
//! tape orders it).

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_f32, expect_rank, to_u32};
pub use crate::cpu::similarity_loss::{ROW, STATS};
use crate::error::{Error, Result};
use crate::gpu::{DType, Dispatch, Gpu, Kernel, Shader, Tensor, grid_1d};
use crate::vocab::{MarginKind, SimilarityLoss};

pub const SHADER: Shader = Shader::new(
    "similarity_loss",
    include_str!("../../shaders/similarity_loss.wgsl"),
);

/// Invocations of a forward row (`WG`) and of the reduction and backward workgroups
/// (`REDUCE_WG`) in the shader.
const WG_BACKWARD: u32 = 256;

// Binding numbers of the shader (see its header).
const DM: u32 = 1;
const LABELS: u32 = 2;
const REF_LABELS: u32 = 3;
const ROWS: u32 = 4;
const LOSS: u32 = 5;
const STATS_BINDING: u32 = 6;
const DLOSS: u32 = 7;
const DDM: u32 = 8;
const WINDOW: u32 = 9;
const BATCH: u32 = 10;
const MEMORY: u32 = 11;
const MEMORY_LABELS: u32 = 12;

/// The WGSL entries of a loss's first pass and of its backward.
fn entries(loss: SimilarityLoss) -> (&'static str, &'static str) {
    match loss {
        SimilarityLoss::MarginSoftmax { .. } => ("margin_softmax_rows", "margin_softmax_backward"),
        SimilarityLoss::ProxyAnchor { .. } => ("proxy_anchor_rows", "proxy_anchor_backward"),
        SimilarityLoss::SupCon { .. } => ("supcon_rows", "supcon_backward"),
        SimilarityLoss::NtXent { .. } => ("ntxent_rows", "ntxent_backward"),
        SimilarityLoss::MultiSimilarity { .. } => {
            ("multi_similarity_rows", "multi_similarity_backward")
        }
    }
}

/// What a similarity loss reads: the cosine distances `dm [N, R]` (1 − s), the row classes
/// `labels [N]` (u32) and, for the losses over embeddings (SupCon, NT-Xent,
/// Multi-Similarity), the column classes `ref_labels [R]` and the `window [4]` (u32,
/// [`Window::words`](crate::cpu::similarity_loss::Window::words)) of the columns each row
/// pairs with. The class heads' columns are classes by position: every label must be below
/// R / K (the kernels cannot check it).
#[derive(Clone, Copy)]
pub struct Similarities<'a> {
    pub dm: &'a Tensor,
    pub labels: &'a Tensor,
    /// For the losses over embeddings: the column classes and the window.
    pub columns: Option<(&'a Tensor, &'a Tensor)>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SimParams {
    n: u32,
    r: u32,
    k: u32,
    _pad2: u32,
    rows: u32,
    angular: u32,
    _pad: [u32; 2],
    h: [f32; 4],
}

/// Checks the tensors and hyper-parameters; returns the shader's parameters.
fn params(op: &'static str, loss: SimilarityLoss, m: &Similarities) -> Result<SimParams> {
    let &[n, r] = expect_rank(op, "dm", m.dm, 2)? else {
        unreachable!()
    };
    expect(op, "labels", m.labels, &[n], DType::U32)?;
    let bad = |detail: String| Error::Shape { op, detail };
    let positive = |what: &str, v: f32| -> Result<()> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(bad(format!("{what} must be a positive number, got {v}")))
        }
    };
    let finite = |what: &str, v: f32| -> Result<()> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(bad(format!("{what} must be a finite number, got {v}")))
        }
    };
    if n == 0 || r == 0 {
        return Err(bad(format!(
            "dm must have rows and columns, got [{n}, {r}]"
        )));
    }
    let over_batch = !loss.learns_classes();
    match (over_batch, m.columns) {
        (true, Some((rl, window))) => {
            expect(op, "ref_labels", rl, &[r], DType::U32)?;
            expect(op, "window", window, &[4], DType::U32)?;
        }
        (true, None) => {
            return Err(bad(
                "this loss needs the columns' classes and window (columns)".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(bad(
                "a class head's columns are classes by position: no columns".into(),
            ));
        }
        (false, None) => {}
    }
    let k = loss.columns_per_class();
    if k == 0 || !r.is_multiple_of(k) {
        return Err(bad(format!(
            "{r} columns are not a whole number of classes of {k} sub-centers"
        )));
    }
    let (angular, h) = match loss {
        SimilarityLoss::MarginSoftmax { margin, scale, .. } => {
            positive("scale", scale)?;
            match margin {
                MarginKind::Angular(m) => {
                    finite("margin", m)?;
                    let m64 = m as f64;
                    (1, [scale, m, m64.cos() as f32, m64.sin() as f32])
                }
                MarginKind::Cosine(m) => {
                    finite("margin", m)?;
                    (0, [scale, m, 0.0, 0.0])
                }
            }
        }
        SimilarityLoss::ProxyAnchor { alpha, margin } => {
            positive("alpha", alpha)?;
            finite("margin", margin)?;
            (0, [alpha, margin, 0.0, 0.0])
        }
        SimilarityLoss::SupCon { temperature } | SimilarityLoss::NtXent { temperature } => {
            positive("temperature", temperature)?;
            (0, [temperature, 0.0, 0.0, 0.0])
        }
        SimilarityLoss::MultiSimilarity {
            alpha,
            beta,
            base,
            epsilon,
        } => {
            positive("alpha", alpha)?;
            positive("beta", beta)?;
            finite("base", base)?;
            finite("epsilon", epsilon)?;
            (0, [alpha, beta, base, epsilon])
        }
    };
    to_u32(op, "N·R", n * r)?;
    Ok(SimParams {
        n: to_u32(op, "N", n)?,
        r: to_u32(op, "R", r)?,
        k: to_u32(op, "K", k)?,
        _pad2: 0,
        rows: to_u32(op, "rows", loss.partial_rows(n, r))?,
        angular,
        _pad: [0; 2],
        h,
    })
}

fn bindings<'a>(m: &Similarities<'a>) -> Vec<(u32, &'a Tensor)> {
    let mut b = vec![(DM, m.dm), (LABELS, m.labels)];
    if let Some((rl, window)) = m.columns {
        b.extend([(REF_LABELS, rl), (WINDOW, window)]);
    }
    b
}

/// The first pass alone: `rows [M, ROW]` (M = [`SimilarityLoss::partial_rows`]), one
/// workgroup per row; the first dispatch of [`forward`], exposed for testing.
pub fn rows(gpu: &Gpu, loss: SimilarityLoss, m: &Similarities, rows: &Tensor) -> Result<Kernel> {
    Ok(Kernel::single(rows_dispatch(gpu, loss, m, rows)?))
}

fn rows_dispatch(
    gpu: &Gpu,
    loss: SimilarityLoss,
    m: &Similarities,
    rows: &Tensor,
) -> Result<Dispatch> {
    let op = entries(loss).0;
    let p = params(op, loss, m)?;
    expect_f32(op, "rows", rows, &[p.rows as usize, ROW])?;
    let mut b = bindings(m);
    b.push((ROWS, rows));
    gpu.dispatch(&SHADER, op, &[], &p, &b, grid_1d(p.rows))
}

/// The reduction alone: `loss [1]` and `stats [4]` = (Σd0, Σd1, Σa, Σb) from `rows [M, ROW]`
/// (the second dispatch of [`forward`], exposed for testing).
pub fn reduce(gpu: &Gpu, rows: &Tensor, loss: &Tensor, stats: &Tensor) -> Result<Kernel> {
    Ok(Kernel::single(reduce_dispatch(gpu, rows, loss, stats)?))
}

fn reduce_dispatch(gpu: &Gpu, rows: &Tensor, loss: &Tensor, stats: &Tensor) -> Result<Dispatch> {
    const OP: &str = "similarity_reduce";
    let m = expect_rank(OP, "rows", rows, 2)?[0];
    expect_f32(OP, "rows", rows, &[m, ROW])?;
    expect_f32(OP, "loss", loss, &[1])?;
    expect_f32(OP, "stats", stats, &[STATS])?;
    let p = SimParams {
        rows: to_u32(OP, "rows", m)?,
        ..Zeroable::zeroed()
    };
    // One workgroup whatever M: the fixed summation shape makes the loss deterministic.
    gpu.dispatch(
        &SHADER,
        OP,
        &[],
        &p,
        &[(ROWS, rows), (LOSS, loss), (STATS_BINDING, stats)],
        [1, 1, 1],
    )
}

/// `loss [1]` and `stats [4]` of `loss` on `m`, through the caller's scratch `rows [M, ROW]`
/// (which the backward reads).
pub fn forward(
    gpu: &Gpu,
    loss: SimilarityLoss,
    m: &Similarities,
    rows: &Tensor,
    out: &Tensor,
    stats: &Tensor,
) -> Result<Kernel> {
    let pass = rows_dispatch(gpu, loss, m, rows)?;
    let reduce = reduce_dispatch(gpu, rows, out, stats)?;
    Ok(Kernel::with_scratch(vec![pass, reduce], Vec::new()))
}

/// `ddm [N, R] = dloss·∂loss/∂dm`, given the forward's `rows` and `stats` and the upstream
/// `dloss [1]`: one invocation per element.
pub fn backward(
    gpu: &Gpu,
    loss: SimilarityLoss,
    m: &Similarities,
    rows: &Tensor,
    stats: &Tensor,
    dloss: &Tensor,
    ddm: &Tensor,
) -> Result<Kernel> {
    let op = entries(loss).1;
    let p = params(op, loss, m)?;
    expect_f32(op, "rows", rows, &[p.rows as usize, ROW])?;
    expect_f32(op, "stats", stats, &[STATS])?;
    expect_f32(op, "dloss", dloss, &[1])?;
    expect_f32(op, "ddm", ddm, m.dm.shape())?;
    let mut b = bindings(m);
    b.extend([
        (ROWS, rows),
        (STATS_BINDING, stats),
        (DLOSS, dloss),
        (DDM, ddm),
    ]);
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        op,
        &[],
        &p,
        &b,
        grid_1d((p.n * p.r).div_ceil(WG_BACKWARD)),
    )?))
}

/// Writes the batch's embeddings `batch [N, D]` and class `labels [N]` into the cross-batch
/// memory `memory [M, D]`, `memory_labels [M]` at the ring slots `(window[0] + i) mod M`
/// (`window` as the losses read it); one invocation per element.
pub fn memory_enqueue(
    gpu: &Gpu,
    batch: &Tensor,
    labels: &Tensor,
    window: &Tensor,
    memory: &Tensor,
    memory_labels: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "memory_enqueue";
    let &[n, dim] = expect_rank(OP, "batch", batch, 2)? else {
        unreachable!()
    };
    expect_f32(OP, "batch", batch, &[n, dim])?;
    expect(OP, "labels", labels, &[n], DType::U32)?;
    expect(OP, "window", window, &[4], DType::U32)?;
    let slots = expect_rank(OP, "memory", memory, 2)?[0];
    expect_f32(OP, "memory", memory, &[slots, dim])?;
    expect(OP, "memory_labels", memory_labels, &[slots], DType::U32)?;
    if slots < n {
        return Err(Error::Shape {
            op: OP,
            detail: format!("a memory of {slots} slots cannot hold a batch of {n}"),
        });
    }
    let p = SimParams {
        n: to_u32(OP, "N", n)?,
        r: to_u32(OP, "M", slots)?,
        k: to_u32(OP, "D", dim)?,
        ..Zeroable::zeroed()
    };
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        OP,
        &[],
        &p,
        &[
            (BATCH, batch),
            (LABELS, labels),
            (WINDOW, window),
            (MEMORY, memory),
            (MEMORY_LABELS, memory_labels),
        ],
        grid_1d(to_u32(OP, "N·D", n * dim)?.div_ceil(WG_BACKWARD)),
    )?))
}
