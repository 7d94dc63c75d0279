//! Launchers for `shaders/dense.wgsl`: `Y = X·Wᵀ + b` (PyTorch `nn.Linear` layout, W is
//! `[out, in]`) and its three gradients.

use bytemuck::{Pod, Zeroable};

use super::{Shader, expect_f32, expect_rank, pack, to_u32};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Kernel, Tensor, Texels, grid_1d};

pub const SHADER: Shader = Shader::new("dense", include_str!("../../shaders/dense.wgsl"));

const WG_COLS: u32 = 8;
const WG_ROWS: u32 = 8;
const BLOCK: u32 = 4;

/// `out[i, j] = Σ_k A(i, k)·B(k, j)` with A(i, k) = a[i·a_row + k·a_k], B(k, j) = b[k·b_k + j·b_col].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    rows: u32,
    cols: u32,
    depth: u32,
    a_row: u32,
    a_k: u32,
    b_k: u32,
    b_col: u32,
    _pad: u32,
}

fn matmul(
    gpu: &Gpu,
    entry: &'static str,
    params: MatmulParams,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    out: &Tensor,
) -> Result<Kernel> {
    let mut bindings = vec![(1, a), (2, b), (4, out)];
    if let Some(bias) = bias {
        bindings.push((3, bias));
    }
    let groups = [
        params.cols.div_ceil(BLOCK * WG_COLS),
        params.rows.div_ceil(BLOCK * WG_ROWS),
        1,
    ];
    let constants = [("WG_COLS", WG_COLS as f64), ("WG_ROWS", WG_ROWS as f64)];
    Ok(Kernel::single(gpu.dispatch(
        &SHADER, entry, &constants, &params, &bindings, groups,
    )?))
}

/// `y [N, M] = x [N, K] · wᵀ + b`, with `w [M, K]`, `b [M]`.
pub fn forward(gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_forward";
    let &[n, k] = expect_rank(OP, "x", x, 2)? else {
        unreachable!()
    };
    let m = expect_rank(OP, "w", w, 2)?[0];
    expect_f32(OP, "w", w, &[m, k])?;
    expect_f32(OP, "b", b, &[m])?;
    expect_f32(OP, "y", y, &[n, m])?;
    let (n, k, m) = (
        to_u32(OP, "N", n)?,
        to_u32(OP, "K", k)?,
        to_u32(OP, "M", m)?,
    );
    let params = MatmulParams {
        rows: n,
        cols: m,
        depth: k,
        a_row: k,
        a_k: 1,
        b_k: 1,
        b_col: k,
        _pad: 0,
    };
    matmul(gpu, OP, params, x, w, Some(b), y)
}

/// `dx [N, K] = dy [N, M] · w [M, K]`.
pub fn grad_input(gpu: &Gpu, dy: &Tensor, w: &Tensor, dx: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_input";
    let &[n, m] = expect_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    let k = expect_rank(OP, "w", w, 2)?[1];
    expect_f32(OP, "w", w, &[m, k])?;
    expect_f32(OP, "dx", dx, &[n, k])?;
    let (n, k, m) = (
        to_u32(OP, "N", n)?,
        to_u32(OP, "K", k)?,
        to_u32(OP, "M", m)?,
    );
    let params = MatmulParams {
        rows: n,
        cols: k,
        depth: m,
        a_row: m,
        a_k: 1,
        b_k: k,
        b_col: 1,
        _pad: 0,
    };
    matmul(gpu, OP, params, dy, w, None, dx)
}

/// `dw [M, K] = dyᵀ · x`, with `dy [N, M]`, `x [N, K]`.
pub fn grad_weight(gpu: &Gpu, dy: &Tensor, x: &Tensor, dw: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_weight";
    let &[n, m] = expect_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    let k = expect_rank(OP, "x", x, 2)?[1];
    expect_f32(OP, "x", x, &[n, k])?;
    expect_f32(OP, "dw", dw, &[m, k])?;
    let (n, k, m) = (
        to_u32(OP, "N", n)?,
        to_u32(OP, "K", k)?,
        to_u32(OP, "M", m)?,
    );
    let params = MatmulParams {
        rows: m,
        cols: k,
        depth: n,
        a_row: 1,
        a_k: m,
        b_k: k,
        b_col: 1,
        _pad: 0,
    };
    matmul(gpu, OP, params, dy, x, None, dw)
}

/// `db [M] = Σ_n dy[n, :]`.
pub fn grad_bias(gpu: &Gpu, dy: &Tensor, db: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_bias";
    let &[n, m] = expect_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    expect_f32(OP, "db", db, &[m])?;
    let (n, m) = (to_u32(OP, "N", n)?, to_u32(OP, "M", m)?);
    let params = MatmulParams {
        rows: n,
        cols: m,
        depth: 0,
        a_row: 0,
        a_k: 0,
        b_k: 0,
        b_col: 0,
        _pad: 0,
    };
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        OP,
        &[],
        &params,
        &[(1, dy), (4, db)],
        grid_1d(m),
    )?))
}

// ---- texel path: operands packed by `ops::pack::rows4` (see the shader's header) ----

const TEX_WG: u32 = 64;

/// `out [rows, cols] = A·Bᵀ + bias` (no bias: zero) from `a` (A packed by
/// [`pack::rows4`]) and `b` (B likewise), both of depth `k` elements.
#[allow(clippy::too_many_arguments)] // the product's operands and sizes, each named
pub fn matmul_tex(
    gpu: &Gpu,
    a: &Texels,
    b: &Texels,
    rows: usize,
    cols: usize,
    k: usize,
    bias: Option<&Tensor>,
    out: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "dense_matmul_tex";
    expect_f32(OP, "out", out, &[rows, cols])?;
    let depth = k.div_ceil(4);
    let params = MatmulParams {
        rows: to_u32(OP, "rows", rows)?,
        cols: to_u32(OP, "cols", cols)?,
        depth: to_u32(OP, "depth", depth)?,
        a_row: 0,
        a_k: 0,
        b_k: 0,
        b_col: 0,
        _pad: 0,
    };
    // Without a bias, a zero one (the kernel always adds it).
    let zero_bias;
    let bias = match bias {
        Some(bias) => {
            expect_f32(OP, "bias", bias, &[cols])?;
            bias
        }
        None => {
            zero_bias = gpu.zeros(&[cols], DType::F32)?;
            &zero_bias
        }
    };
    let invocations = rows.div_ceil(8) * cols.div_ceil(8);
    let dispatch = gpu.dispatch_with_texels(
        &SHADER,
        OP,
        &[],
        &params,
        &[(3, bias), (4, out)],
        &[(5, a), (6, b)],
        grid_1d((invocations as u32).div_ceil(TEX_WG)),
    )?;
    Ok(Kernel::with_scratch(vec![dispatch], vec![bias.clone()]))
}

/// [`forward`] through the texel kernel: packs x and w, then multiplies.
pub fn forward_packed(gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    let &[n, k] = expect_rank("dense_forward", "x", x, 2)? else {
        unreachable!()
    };
    let m = w.dim(0);
    expect_f32("dense_forward", "w", w, &[m, k])?;
    let (pack_x, xt) = pack::rows4(gpu, x, false)?;
    let (pack_w, wt) = pack::rows4(gpu, w, false)?;
    let product = matmul_tex(gpu, &xt, &wt, n, m, k, Some(b), y)?;
    Ok(Kernel::chain([pack_x, pack_w, product]))
}

/// [`grad_input`] through the texel kernel: dX = dY·W, with W packed transposed.
pub fn grad_input_packed(gpu: &Gpu, dy: &Tensor, w: &Tensor, dx: &Tensor) -> Result<Kernel> {
    let &[m, k] = expect_rank("dense_grad_input", "w", w, 2)? else {
        unreachable!()
    };
    let n = dx.dim(0);
    expect_f32("dense_grad_input", "dy", dy, &[n, m])?;
    let (pack_dy, dyt) = pack::rows4(gpu, dy, false)?;
    let (pack_w, wt) = pack::rows4(gpu, w, true)?;
    let product = matmul_tex(gpu, &dyt, &wt, n, k, m, None, dx)?;
    Ok(Kernel::chain([pack_dy, pack_w, product]))
}

/// [`grad_weight`] through the texel kernel: dW = dYᵀ·X, both packed transposed.
pub fn grad_weight_packed(gpu: &Gpu, dy: &Tensor, x: &Tensor, dw: &Tensor) -> Result<Kernel> {
    let &[n, k] = expect_rank("dense_grad_weight", "x", x, 2)? else {
        unreachable!()
    };
    let m = dw.dim(0);
    expect_f32("dense_grad_weight", "dy", dy, &[n, m])?;
    let (pack_dy, dyt) = pack::rows4(gpu, dy, true)?;
    let (pack_x, xt) = pack::rows4(gpu, x, true)?;
    let product = matmul_tex(gpu, &dyt, &xt, m, k, n, None, dw)?;
    Ok(Kernel::chain([pack_dy, pack_x, product]))
}
