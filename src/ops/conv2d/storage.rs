//! The storage-buffer launchers of `shaders/conv2d.wgsl`: any stride, padding and kernel
//! shape; each invocation computes a 4×4 register block of its output.

use super::{MAX_POSITIONS_PER_INVOCATION, Out, SHADER, shader};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Tensor, grid_1d};
use crate::ops::{expect, expect_f32, expect_float_rank, expect_rank, to_u32};
use crate::vocab::Conv2dGeometry;

const WG_PIX: u32 = 16;
const WG_CH: u32 = 4;
const BLOCK: u32 = 4;
const CONSTANTS: [(&str, f64); 2] = [("WG_PIX", WG_PIX as f64), ("WG_CH", WG_CH as f64)];
/// grad_weight splits its reduction until about this many invocations run at once.
const TARGET_INVOCATIONS: u32 = 16_384;

fn blocks(rows: usize, cols: usize) -> [u32; 3] {
    [
        (cols as u32).div_ceil(BLOCK * WG_PIX),
        (rows as u32).div_ceil(BLOCK * WG_CH),
        1,
    ]
}

/// `y = conv2d(x, w) + b`; `x [N, C, H, W]`, `w [O, C, KH, KW]`, `b [O]`, `y [N, O, OH, OW]`,
/// all f32 or all f16.
pub fn forward(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_forward";
    let g = Conv2dGeometry::of(OP, x, w, stride, pad)?;
    let dtype = x.dtype();
    expect(OP, "w", w, &g.weight_shape(), dtype)?;
    expect(OP, "b", b, &[g.o], dtype)?;
    expect(OP, "y", y, &g.output_shape(), dtype)?;
    let params = g.params(OP, 1, 0)?;
    let groups = blocks(g.o, g.n * g.out_h() * g.out_w());
    let bindings = [(1, x), (2, w), (3, b), (4, y)];
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype, Out::Activation),
        OP,
        &CONSTANTS,
        &params,
        &bindings,
        groups,
    )?))
}

/// `dx [N, C, H, W]` from `dy [N, O, OH, OW]` and `w [O, C, KH, KW]`, all f32 or all f16.
pub fn grad_input(
    gpu: &Gpu,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_input";
    let g = Conv2dGeometry::of(OP, dx, w, stride, pad)?;
    let dtype = dx.dtype();
    expect(OP, "w", w, &g.weight_shape(), dtype)?;
    expect(OP, "dy", dy, &g.output_shape(), dtype)?;
    let params = g.params(OP, 1, 0)?;
    let groups = blocks(g.c, g.n * g.h * g.w);
    let bindings = [(1, dy), (2, w), (4, dx)];
    let constants = [
        CONSTANTS[0],
        CONSTANTS[1],
        ("GRAD_INPUT_STRIDE", stride as f64),
    ];
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype, Out::Activation),
        OP,
        &constants,
        &params,
        &bindings,
        groups,
    )?))
}

/// `dw [O, C, KH, KW]` (f32) from `dy [N, O, OH, OW]` and `x [N, C, H, W]` (both f32 or both
/// f16), splitting the reduction over images so that enough invocations run (see the
/// shader's header).
pub fn grad_weight(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    let g = Conv2dGeometry::of("conv2d_grad_weight", x, dw, stride, pad)?;
    let block_count = (g.o as u32).div_ceil(BLOCK) * ((g.c * g.kh * g.kw) as u32).div_ceil(BLOCK);
    let splits = (TARGET_INVOCATIONS / block_count).clamp(1, g.n as u32) as usize;
    // Whole images per split, each walked row by row (a row's loop exit counts too).
    let per_image = g.out_h() * (g.out_w() + 1);
    let max_images = (MAX_POSITIONS_PER_INVOCATION / per_image).max(1);
    let splits = splits.max(g.n.div_ceil(max_images));
    grad_weight_split(gpu, dy, x, dw, stride, pad, splits)
}

/// [`grad_weight`] with an explicit number of splits (1 writes `dw` in a single dispatch).
pub fn grad_weight_split(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    pad: usize,
    splits: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_weight";
    let g = Conv2dGeometry::of(OP, x, dw, stride, pad)?;
    let dtype = x.dtype();
    expect(OP, "dy", dy, &g.output_shape(), dtype)?;
    expect_f32(OP, "dw", dw, &g.weight_shape())?;
    if splits == 0 || splits > g.n {
        return Err(Error::Shape {
            op: OP,
            detail: format!("splits must be in 1..={}, got {splits}", g.n),
        });
    }
    let images_per_split = g.n.div_ceil(splits);
    // Round so that no split is empty.
    let splits = g.n.div_ceil(images_per_split);
    let params = g.params(OP, splits as u32, images_per_split as u32)?;
    let taps = g.c * g.kh * g.kw;
    let [gx, gy, _] = blocks(g.o, taps);
    let groups = [gx, gy, splits as u32];
    let shader = shader(dtype, Out::Gradient);
    if splits == 1 {
        let bindings = [(1, dy), (5, x), (4, dw)];
        return Ok(Kernel::single(
            gpu.dispatch(&shader, OP, &CONSTANTS, &params, &bindings, groups)?,
        ));
    }
    let partial = gpu.zeros(&[splits, g.o * taps], DType::F32)?;
    let partial_pass = gpu.dispatch(
        &shader,
        OP,
        &CONSTANTS,
        &params,
        &[(1, dy), (5, x), (4, &partial)],
        groups,
    )?;
    let reduce = grad_weight_reduce(gpu, &partial, dw)?;
    let mut dispatches = vec![partial_pass];
    dispatches.extend(reduce.dispatches);
    Ok(Kernel::with_scratch(dispatches, vec![partial]))
}

/// `dw [O, C, KH, KW] = Σ_split partial[split, :]`, the second pass of a split grad_weight
/// (f32 partials and dw whatever the type of the activations).
pub fn grad_weight_reduce(gpu: &Gpu, partial: &Tensor, dw: &Tensor) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_weight_reduce";
    let &[o, c, kh, kw] = expect_rank(OP, "dw", dw, 4)? else {
        unreachable!()
    };
    let splits = expect_rank(OP, "partial", partial, 2)?[0];
    expect_f32(OP, "partial", partial, &[splits, o * c * kh * kw])?;
    let g = Conv2dGeometry {
        n: 1,
        c,
        h: kh,
        w: kw,
        o,
        kh,
        kw,
        stride: 1,
        pad: 0,
    };
    let params = g.params(OP, to_u32(OP, "splits", splits)?, 0)?;
    let groups = grid_1d(to_u32(OP, "dw elements", dw.len())?.div_ceil(256));
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        OP,
        &[],
        &params,
        &[(1, partial), (4, dw)],
        groups,
    )?))
}

/// `db [O] = Σ_{n, oy, ox} dy[n, :, oy, ox]`; dy f32 or f16, db f32.
pub fn grad_bias(gpu: &Gpu, dy: &Tensor, db: &Tensor) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_bias";
    let (&[n, o, oh, ow], dtype) = expect_float_rank(OP, "dy", dy, 4)? else {
        unreachable!()
    };
    expect_f32(OP, "db", db, &[o])?;
    let g = Conv2dGeometry {
        n,
        c: 1,
        h: oh,
        w: ow,
        o,
        kh: 1,
        kw: 1,
        stride: 1,
        pad: 0,
    };
    let params = g.params(OP, 1, 0)?;
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype, Out::Gradient),
        OP,
        &[],
        &params,
        &[(1, dy), (4, db)],
        [o as u32, 1, 1],
    )?))
}
