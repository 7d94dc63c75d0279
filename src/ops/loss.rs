//! Launchers for `shaders/loss.wgsl`: contrastive, triplet and binary cross-entropy losses,
//! each reduced to the batch mean in one deterministic workgroup, and their gradients; and
//! the contrastive and triplet losses fused with the Euclidean or cosine distance before them.
//!
//! Every forward writes a 1-element f32 tensor (the mean over the batch); every backward
//! takes the upstream gradient `dloss` as a 1-element f32 tensor (normally holding 1), so a
//! tape can chain it without a host round trip.
//!
//! Pair labels are [`PairLabel`] values, uploaded as their [`PairLabel::code`]; the shader
//! reads a code equal to `PairLabel::Same.code()` as Same and any other as Different, so a
//! label buffer must be built with [`PairLabel::upload`] (or the same codes), never from a
//! bare 0/1 whose meaning is left implicit.

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_f32, expect_rank, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Shader, Tensor, grid_1d};
use crate::vocab::{Distance, PairLabel};

pub const SHADER: Shader = Shader::new("loss", include_str!("../../shaders/loss.wgsl"));

impl PairLabel {
    /// Uploads labels as a u32 tensor of shape `[labels.len()]`, ready for the loss kernels.
    pub fn upload(gpu: &Gpu, labels: &[PairLabel]) -> Result<Tensor> {
        gpu.upload_u32(&PairLabel::codes(labels), &[labels.len()])
    }
}

/// Invocations per workgroup of every loss entry (`REDUCE_WG` in the shader).
const REDUCE_WG: u32 = 256;

/// Binding 0 of every loss entry.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LossParams {
    batch: u32,
    margin: f32,
    dim: u32,
    _pad: u32,
}

/// Checks `x` is a non-empty f32 `[B]` and returns B as the shaders' u32.
fn batch_of(op: &'static str, what: &str, x: &Tensor) -> Result<(usize, u32)> {
    let b = expect_rank(op, what, x, 1)?[0];
    Ok((b, to_u32(op, "B", b)?))
}

fn check_margin(op: &'static str, margin: f32) -> Result<()> {
    if !margin.is_finite() {
        return Err(Error::Shape {
            op,
            detail: format!("margin must be a finite number, got {margin}"),
        });
    }
    Ok(())
}

fn params(batch: u32, margin: f32) -> LossParams {
    LossParams {
        batch,
        margin,
        dim: 0,
        _pad: 0,
    }
}

fn reduce(
    gpu: &Gpu,
    entry: &'static str,
    params: LossParams,
    bindings: &[(u32, &Tensor)],
) -> Result<Kernel> {
    // One workgroup whatever B: the fixed summation shape is what makes the loss deterministic.
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        entry,
        &[],
        &params,
        bindings,
        [1, 1, 1],
    )?))
}

fn elementwise(
    gpu: &Gpu,
    entry: &'static str,
    params: LossParams,
    bindings: &[(u32, &Tensor)],
) -> Result<Kernel> {
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        entry,
        &[],
        &params,
        bindings,
        grid_1d(params.batch.div_ceil(REDUCE_WG)),
    )?))
}

/// `loss [1] = mean_i(same_i·d_i² + different_i·max(0, m − d_i)²)` (Hadsell, Chopra, LeCun
/// 2006), with `d [B]` pair distances and `labels [B]` from [`PairLabel::upload`].
pub fn contrastive_forward(
    gpu: &Gpu,
    d: &Tensor,
    labels: &Tensor,
    margin: f32,
    loss: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "contrastive_loss_forward";
    let (b, batch) = batch_of(OP, "d", d)?;
    expect(OP, "labels", labels, &[b], DType::U32)?;
    expect_f32(OP, "loss", loss, &[1])?;
    check_margin(OP, margin)?;
    reduce(
        gpu,
        OP,
        params(batch, margin),
        &[(1, d), (2, labels), (5, loss)],
    )
}

/// `dd [B] = dloss·∂loss/∂d`: `2·d_i/B` for Same pairs, `−2·max(0, m − d_i)/B` for Different.
pub fn contrastive_backward(
    gpu: &Gpu,
    d: &Tensor,
    labels: &Tensor,
    margin: f32,
    dloss: &Tensor,
    dd: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "contrastive_loss_backward";
    let (b, batch) = batch_of(OP, "d", d)?;
    expect(OP, "labels", labels, &[b], DType::U32)?;
    expect_f32(OP, "dloss", dloss, &[1])?;
    expect_f32(OP, "dd", dd, &[b])?;
    check_margin(OP, margin)?;
    elementwise(
        gpu,
        OP,
        params(batch, margin),
        &[(1, d), (2, labels), (4, dloss), (6, dd)],
    )
}

/// `loss [1] = mean_i(max(0, d_ap_i − d_an_i + m))`: the hinge per triplet, then the mean.
pub fn triplet_forward(
    gpu: &Gpu,
    d_ap: &Tensor,
    d_an: &Tensor,
    margin: f32,
    loss: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "triplet_loss_forward";
    let (b, batch) = batch_of(OP, "d_ap", d_ap)?;
    expect_f32(OP, "d_an", d_an, &[b])?;
    expect_f32(OP, "loss", loss, &[1])?;
    check_margin(OP, margin)?;
    reduce(
        gpu,
        OP,
        params(batch, margin),
        &[(1, d_ap), (3, d_an), (5, loss)],
    )
}

/// `dd_ap [B] = dloss/B` and `dd_an [B] = −dloss/B` where the triplet's hinge is active
/// (`d_ap − d_an + m > 0`), 0 elsewhere.
pub fn triplet_backward(
    gpu: &Gpu,
    d_ap: &Tensor,
    d_an: &Tensor,
    margin: f32,
    dloss: &Tensor,
    dd_ap: &Tensor,
    dd_an: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "triplet_loss_backward";
    let (b, batch) = batch_of(OP, "d_ap", d_ap)?;
    expect_f32(OP, "d_an", d_an, &[b])?;
    expect_f32(OP, "dloss", dloss, &[1])?;
    expect_f32(OP, "dd_ap", dd_ap, &[b])?;
    expect_f32(OP, "dd_an", dd_an, &[b])?;
    check_margin(OP, margin)?;
    elementwise(
        gpu,
        OP,
        params(batch, margin),
        &[(1, d_ap), (3, d_an), (4, dloss), (6, dd_ap), (7, dd_an)],
    )
}

/// `loss [1] = mean_i(max(z_i, 0) − z_i·y_i + log(1 + exp(−|z_i|)))`, the stable form of
/// binary cross-entropy on logits `z [B]`, with target y = 1 for Same and 0 for Different.
pub fn bce_with_logits_forward(
    gpu: &Gpu,
    z: &Tensor,
    labels: &Tensor,
    loss: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "bce_with_logits_forward";
    let (b, batch) = batch_of(OP, "z", z)?;
    expect(OP, "labels", labels, &[b], DType::U32)?;
    expect_f32(OP, "loss", loss, &[1])?;
    reduce(
        gpu,
        OP,
        params(batch, 0.0),
        &[(1, z), (2, labels), (5, loss)],
    )
}

/// `dz [B] = dloss·(σ(z_i) − y_i)/B`.
pub fn bce_with_logits_backward(
    gpu: &Gpu,
    z: &Tensor,
    labels: &Tensor,
    dloss: &Tensor,
    dz: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "bce_with_logits_backward";
    let (b, batch) = batch_of(OP, "z", z)?;
    expect(OP, "labels", labels, &[b], DType::U32)?;
    expect_f32(OP, "dloss", dloss, &[1])?;
    expect_f32(OP, "dz", dz, &[b])?;
    elementwise(
        gpu,
        OP,
        params(batch, 0.0),
        &[(1, z), (2, labels), (4, dloss), (6, dz)],
    )
}

/// The largest `B·D` the fused entries take: their forward is one workgroup of
/// 256 invocations, each walking B·D/256 elements, which stays far under llvmpipe's 65,535
/// loop iterations and keeps the one workgroup short on a GPU. Larger batches take the
/// separate distance and loss kernels.
pub const FUSED_MAX_ELEMENTS: usize = 256 * 4096;

/// Checks a fused entry's embeddings: `a [B, D]` and each of `others` of the same shape, the
/// margin, and B·D against [`FUSED_MAX_ELEMENTS`]; returns (B, D) and the shader parameters.
fn fused_params(
    op: &'static str,
    a: &Tensor,
    others: &[(&str, &Tensor)],
    margin: f32,
) -> Result<(usize, usize, LossParams)> {
    let &[rows, dim] = expect_rank(op, "a", a, 2)? else {
        unreachable!()
    };
    for &(what, t) in others {
        expect_f32(op, what, t, &[rows, dim])?;
    }
    check_margin(op, margin)?;
    if rows * dim > FUSED_MAX_ELEMENTS {
        return Err(Error::Shape {
            op,
            detail: format!(
                "B·D = {rows}·{dim} is over the fused kernel's {FUSED_MAX_ELEMENTS}; use the \
                 separate distance and loss kernels"
            ),
        });
    }
    let p = LossParams {
        dim: to_u32(op, "D", dim)?,
        ..params(to_u32(op, "B", rows)?, margin)
    };
    Ok((rows, dim, p))
}

/// The fused entry of `kind` (Euclidean or cosine): `euclidean` or `cosine`.
fn fused_entry(
    op: &'static str,
    kind: Distance,
    euclidean: &'static str,
    cosine: &'static str,
) -> Result<&'static str> {
    match kind {
        Distance::Euclidean => Ok(euclidean),
        Distance::Cosine => Ok(cosine),
        other => Err(Error::Shape {
            op,
            detail: format!(
                "the fused kernels take the Euclidean or cosine distance, not {other:?}: use \
                 the separate distance and loss kernels"
            ),
        }),
    }
}

/// Workgroups of a fused backward: one invocation per element of `[B, D]` (Euclidean), or
/// per pair (cosine, whose gradient needs the pair's three sums first).
fn fused_backward_grid(
    op: &'static str,
    kind: Distance,
    rows: usize,
    dim: usize,
) -> Result<[u32; 3]> {
    let invocations = match kind {
        Distance::Cosine => to_u32(op, "B", rows)?,
        _ => to_u32(op, "B·D", rows * dim)?,
    };
    Ok(grid_1d(invocations.div_ceil(REDUCE_WG)))
}

/// The contrastive loss of the `kind` distances (Euclidean or cosine) between paired
/// embeddings `a`, `b [B, D]` in one pass: `d [B]` (kept for the backward) and `loss [1]`,
/// the arithmetic of `distance::forward(kind)` then [`contrastive_forward`] (the same bits,
/// up to how the compiler contracts the loss's sum).
#[allow(clippy::too_many_arguments)] // the buffers it binds, each named
pub fn contrastive_fused_forward(
    gpu: &Gpu,
    kind: Distance,
    a: &Tensor,
    b: &Tensor,
    labels: &Tensor,
    margin: f32,
    d: &Tensor,
    loss: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "contrastive_fused_forward";
    let entry = fused_entry(
        OP,
        kind,
        "contrastive_euclidean_forward",
        "contrastive_cosine_forward",
    )?;
    let (rows, _, p) = fused_params(entry, a, &[("b", b)], margin)?;
    expect(entry, "labels", labels, &[rows], DType::U32)?;
    expect_f32(entry, "d", d, &[rows])?;
    expect_f32(entry, "loss", loss, &[1])?;
    reduce(
        gpu,
        entry,
        p,
        &[(8, a), (9, b), (2, labels), (6, d), (5, loss)],
    )
}

/// The gradients of [`contrastive_fused_forward`]'s loss times `dloss`: `da`, `db [B, D]`,
/// the arithmetic of [`contrastive_backward`] then `distance::backward(kind)`.
#[allow(clippy::too_many_arguments)] // the buffers it binds, each named
pub fn contrastive_fused_backward(
    gpu: &Gpu,
    kind: Distance,
    a: &Tensor,
    b: &Tensor,
    labels: &Tensor,
    margin: f32,
    d: &Tensor,
    dloss: &Tensor,
    da: &Tensor,
    db: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "contrastive_fused_backward";
    let entry = fused_entry(
        OP,
        kind,
        "contrastive_euclidean_backward",
        "contrastive_cosine_backward",
    )?;
    let (rows, dim, p) = fused_params(entry, a, &[("b", b)], margin)?;
    expect(entry, "labels", labels, &[rows], DType::U32)?;
    expect_f32(entry, "d", d, &[rows])?;
    expect_f32(entry, "dloss", dloss, &[1])?;
    expect_f32(entry, "da", da, &[rows, dim])?;
    expect_f32(entry, "db", db, &[rows, dim])?;
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        entry,
        &[],
        &p,
        &[
            (8, a),
            (9, b),
            (1, d),
            (2, labels),
            (4, dloss),
            (10, da),
            (11, db),
        ],
        fused_backward_grid(entry, kind, rows, dim)?,
    )?))
}

/// Random-triplet loss of the `kind` distances (Euclidean or cosine) of anchors `a` to
/// positives `p` and to negatives `n` (`[B, D]` each), in one pass: `d_ap`, `d_an [B]` (kept
/// for the backward) and `loss [1]`, the arithmetic of two `distance::forward(kind)` then
/// [`triplet_forward`].
#[allow(clippy::too_many_arguments)] // the buffers it binds, each named
pub fn triplet_fused_forward(
    gpu: &Gpu,
    kind: Distance,
    a: &Tensor,
    p: &Tensor,
    n: &Tensor,
    margin: f32,
    d_ap: &Tensor,
    d_an: &Tensor,
    loss: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "triplet_fused_forward";
    let entry = fused_entry(
        OP,
        kind,
        "triplet_euclidean_forward",
        "triplet_cosine_forward",
    )?;
    let (rows, _, params) = fused_params(entry, a, &[("p", p), ("n", n)], margin)?;
    expect_f32(entry, "d_ap", d_ap, &[rows])?;
    expect_f32(entry, "d_an", d_an, &[rows])?;
    expect_f32(entry, "loss", loss, &[1])?;
    reduce(
        gpu,
        entry,
        params,
        &[(8, a), (9, p), (12, n), (6, d_ap), (7, d_an), (5, loss)],
    )
}

/// The gradients of [`triplet_fused_forward`]'s loss times `dloss`: `da`, `dp`, `dn`
/// `[B, D]`, the anchor's the sum of its two distances' (as the tape would add them).
#[allow(clippy::too_many_arguments)] // the buffers it binds, each named
pub fn triplet_fused_backward(
    gpu: &Gpu,
    kind: Distance,
    a: &Tensor,
    p: &Tensor,
    n: &Tensor,
    margin: f32,
    d_ap: &Tensor,
    d_an: &Tensor,
    dloss: &Tensor,
    grads: [&Tensor; 3],
) -> Result<Kernel> {
    const OP: &str = "triplet_fused_backward";
    let entry = fused_entry(
        OP,
        kind,
        "triplet_euclidean_backward",
        "triplet_cosine_backward",
    )?;
    let (rows, dim, params) = fused_params(entry, a, &[("p", p), ("n", n)], margin)?;
    expect_f32(entry, "d_ap", d_ap, &[rows])?;
    expect_f32(entry, "d_an", d_an, &[rows])?;
    expect_f32(entry, "dloss", dloss, &[1])?;
    let [da, dp, dn] = grads;
    for (what, g) in [("da", da), ("dp", dp), ("dn", dn)] {
        expect_f32(entry, what, g, &[rows, dim])?;
    }
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        entry,
        &[],
        &params,
        &[
            (8, a),
            (9, p),
            (12, n),
            (1, d_ap),
            (3, d_an),
            (4, dloss),
            (10, da),
            (11, dp),
            (13, dn),
        ],
        fused_backward_grid(entry, kind, rows, dim)?,
    )?))
}
