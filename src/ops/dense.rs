//! Launchers for `shaders/dense.wgsl`: `Y = X·Wᵀ + b` (PyTorch `nn.Linear` layout, W is
//! `[out, in]`) and its three gradients.
//!
//! Each takes f32 or f16 activations: x, w, b, y, dy and dx share one float type (under
//! mixed precision w and b are the f16 copies of the master weights), while dw and db are
//! always f32. The kernels accumulate in f32 either way; an f16 y or dx is rounded once, when
//! stored.
//!
//! The three products have a storage kernel and a texel kernel; [`plan`] builds a layer's
//! kernels on the [`Operands`] the device's [`Policy`](crate::gpu::Policy) names.

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_float_rank, float_dtype, pack, to_u32};
use crate::error::Result;
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Operands, Shader, Tensor, Texels, grid_1d};

pub const SHADER: Shader = Shader::new("dense", include_str!("../../shaders/dense.wgsl"));

/// The forward's tensors, `y = x · wᵀ + b`.
pub struct DenseTensors<'a> {
    pub x: &'a Tensor,
    pub w: &'a Tensor,
    pub b: &'a Tensor,
    pub y: &'a Tensor,
}

/// The backward's tensors: the gradient `dy` of y, and each of dx, dw and db where one is
/// wanted.
pub struct DenseGrads<'a> {
    pub dy: &'a Tensor,
    pub dx: Option<&'a Tensor>,
    pub dw: Option<&'a Tensor>,
    pub db: Option<&'a Tensor>,
}

/// The kernels of one dense layer: the forward, and the gradients' kernels in order.
pub struct DensePlan {
    pub forward: Kernel,
    pub backward: Vec<Kernel>,
}

/// The layer's kernels: its forward, and with `grads` the kernels writing them; the three
/// products take the kernels reading `operands` (grad_bias has one kernel).
pub fn plan(
    gpu: &Gpu,
    t: &DenseTensors,
    grads: Option<&DenseGrads>,
    operands: Operands,
) -> Result<DensePlan> {
    let texels = operands == Operands::Texels;
    let forward = if texels {
        forward_packed(gpu, t.x, t.w, t.b, t.y)?
    } else {
        forward(gpu, t.x, t.w, t.b, t.y)?
    };
    let mut backward = Vec::new();
    if let Some(&DenseGrads { dy, dx, dw, db }) = grads {
        if let Some(dx) = dx {
            backward.push(if texels {
                grad_input_packed(gpu, dy, t.w, dx)?
            } else {
                grad_input(gpu, dy, t.w, dx)?
            });
        }
        if let Some(dw) = dw {
            backward.push(if texels {
                grad_weight_packed(gpu, dy, t.x, dw)?
            } else {
                grad_weight(gpu, dy, t.x, dw)?
            });
        }
        if let Some(db) = db {
            backward.push(grad_bias(gpu, dy, db)?);
        }
    }
    Ok(DensePlan { forward, backward })
}

/// The shader for operands of float type `dtype`, writing an output of the same type
/// (`out_f32` false: y, dx) or f32 (`out_f32` true: dw, db).
fn shader(dtype: DType, out_f32: bool) -> Shader {
    match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: if out_f32 {
                &["elem"]
            } else {
                &["elem", "out_elem"]
            },
            texels: false,
        }),
        _ => SHADER,
    }
}

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

#[allow(clippy::too_many_arguments)] // the product's operands, each named
fn matmul(
    gpu: &Gpu,
    shader: &Shader,
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
        shader, entry, &constants, &params, &bindings, groups,
    )?))
}

/// `y [N, M] = x [N, K] · wᵀ + b`, with `w [M, K]`, `b [M]`; all four f32, or all f16.
pub fn forward(gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_forward";
    let (&[n, k], dtype) = expect_float_rank(OP, "x", x, 2)? else {
        unreachable!()
    };
    let m = expect_float_rank(OP, "w", w, 2)?.0[0];
    expect(OP, "w", w, &[m, k], dtype)?;
    expect(OP, "b", b, &[m], dtype)?;
    expect(OP, "y", y, &[n, m], dtype)?;
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
    matmul(gpu, &shader(dtype, false), OP, params, x, w, Some(b), y)
}

/// `dx [N, K] = dy [N, M] · w [M, K]`; all three f32, or all f16.
pub fn grad_input(gpu: &Gpu, dy: &Tensor, w: &Tensor, dx: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_input";
    let (&[n, m], dtype) = expect_float_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    let k = expect_float_rank(OP, "w", w, 2)?.0[1];
    expect(OP, "w", w, &[m, k], dtype)?;
    expect(OP, "dx", dx, &[n, k], dtype)?;
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
    matmul(gpu, &shader(dtype, false), OP, params, dy, w, None, dx)
}

/// `dw [M, K] = dyᵀ · x`, with `dy [N, M]`, `x [N, K]` (both f32, or both f16); dw is f32.
pub fn grad_weight(gpu: &Gpu, dy: &Tensor, x: &Tensor, dw: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_weight";
    let (&[n, m], dtype) = expect_float_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    let k = expect_float_rank(OP, "x", x, 2)?.0[1];
    expect(OP, "x", x, &[n, k], dtype)?;
    expect(OP, "dw", dw, &[m, k], DType::F32)?;
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
    matmul(gpu, &shader(dtype, true), OP, params, dy, x, None, dw)
}

/// `db [M] = Σ_n dy[n, :]`, with `dy` f32 or f16; db is f32.
pub fn grad_bias(gpu: &Gpu, dy: &Tensor, db: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_bias";
    let (&[n, m], dtype) = expect_float_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    expect(OP, "db", db, &[m], DType::F32)?;
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
        &shader(dtype, true),
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
/// [`pack::rows4`]) and `b` (B likewise), both of depth `k` elements. The texels may be f32
/// or f16 (what `rows4` gives for an f32 or f16 tensor); `out` is f32 or f16 (y, dx of
/// either type, or an f32 dw of f16 operands), and `bias` has `out`'s type.
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
    let dtype = float_dtype(OP, "out", out)?;
    expect(OP, "out", out, &[rows, cols], dtype)?;
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
            expect(OP, "bias", bias, &[cols], dtype)?;
            bias
        }
        None => {
            zero_bias = gpu.zeros(&[cols], dtype)?;
            &zero_bias
        }
    };
    let invocations = rows.div_ceil(8) * cols.div_ceil(8);
    // Every storage binding (bias, out) has out's type: the f16 variant is the one the
    // storage forward uses.
    let dispatch = gpu.dispatch_with_texels(
        &shader(dtype, false),
        OP,
        &[],
        &params,
        &[(3, bias), (4, out)],
        &[(5, a), (6, b)],
        grid_1d((invocations as u32).div_ceil(TEX_WG)),
    )?;
    Ok(Kernel::with_scratch(vec![dispatch], vec![bias.clone()]))
}

/// [`forward`] through the texel kernel: packs x and w (f16 tensors into f16 texels), then
/// multiplies. Takes the tensors [`forward`] takes.
pub fn forward_packed(gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_forward";
    let (&[n, k], dtype) = expect_float_rank(OP, "x", x, 2)? else {
        unreachable!()
    };
    let m = expect_float_rank(OP, "w", w, 2)?.0[0];
    expect(OP, "w", w, &[m, k], dtype)?;
    expect(OP, "b", b, &[m], dtype)?;
    expect(OP, "y", y, &[n, m], dtype)?;
    let (pack_x, xt) = pack::rows4(gpu, x, false)?;
    let (pack_w, wt) = pack::rows4(gpu, w, false)?;
    let product = matmul_tex(gpu, &xt, &wt, n, m, k, Some(b), y)?;
    Ok(Kernel::chain([pack_x, pack_w, product]))
}

/// [`grad_input`] through the texel kernel: dX = dY·W, with W packed transposed. Takes the
/// tensors [`grad_input`] takes.
pub fn grad_input_packed(gpu: &Gpu, dy: &Tensor, w: &Tensor, dx: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_input";
    let (&[n, m], dtype) = expect_float_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    let k = expect_float_rank(OP, "w", w, 2)?.0[1];
    expect(OP, "w", w, &[m, k], dtype)?;
    expect(OP, "dx", dx, &[n, k], dtype)?;
    let (pack_dy, dyt) = pack::rows4(gpu, dy, false)?;
    let (pack_w, wt) = pack::rows4(gpu, w, true)?;
    let product = matmul_tex(gpu, &dyt, &wt, n, k, m, None, dx)?;
    Ok(Kernel::chain([pack_dy, pack_w, product]))
}

/// [`grad_weight`] through the texel kernel: dW = dYᵀ·X, both packed transposed. Takes the
/// tensors [`grad_weight`] takes (dw f32).
pub fn grad_weight_packed(gpu: &Gpu, dy: &Tensor, x: &Tensor, dw: &Tensor) -> Result<Kernel> {
    const OP: &str = "dense_grad_weight";
    let (&[n, m], dtype) = expect_float_rank(OP, "dy", dy, 2)? else {
        unreachable!()
    };
    let k = expect_float_rank(OP, "x", x, 2)?.0[1];
    expect(OP, "x", x, &[n, k], dtype)?;
    expect(OP, "dw", dw, &[m, k], DType::F32)?;
    let (pack_dy, dyt) = pack::rows4(gpu, dy, true)?;
    let (pack_x, xt) = pack::rows4(gpu, x, true)?;
    let product = matmul_tex(gpu, &dyt, &xt, m, k, n, None, dw)?;
    Ok(Kernel::chain([pack_dy, pack_x, product]))
}
