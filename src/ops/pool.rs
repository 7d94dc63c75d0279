//! Launchers for `shaders/pool.wgsl`: 2-D max and average pooling and global average
//! pooling over NCHW f32 or f16 tensors (all of one launch's x, y, dy, dx and dx texels
//! share the type; f16 runs the shader's f16 variant, where the maxima are exact and the
//! averages sum in f32), square `kernel`×`kernel` windows, `stride` ≥ 1. Max pooling takes
//! PyTorch's padding (`pad` ≤ kernel/2 rows and columns of −∞ on every side, so a padded
//! position is never chosen: torchvision's ResNet stem is kernel 3, stride 2, pad 1);
//! average pooling takes none. The output is OH = (H + 2·pad − kernel)/stride + 1 by
//! OW = (W + 2·pad − kernel)/stride + 1, floored as in PyTorch (a 10×10 plane pooled by 2
//! gives 5×5; 11×11 also gives 5×5, the last row and column being read by no window and
//! getting a zero gradient).
//!
//! Max pooling records, per output, the in-plane index h·W + w of the input element it
//! chose (`argmax`, u32, the first maximum in row-major window order on ties, as PyTorch);
//! the backward routes the gradient through it. Both backwards gather (each input sums the
//! windows containing it), so overlapping windows (stride < kernel) need no atomics and
//! the result is deterministic.
//!
//! Global average pooling (`[N, C, H, W]` → `[N, C]`, the mean of each plane) sums a plane
//! in one invocation, so it takes planes of at most [`GLOBAL_POOL_MAX_PLANE`] elements.

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_float_rank, float_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, Texels, grid_1d};

pub const SHADER: Shader = Shader::new("pool", include_str!("../../shaders/pool.wgsl"));

/// The shader with its tensors (and the dx texels) of type `dtype`.
fn shader(dtype: DType) -> Shader {
    match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: true,
        }),
        _ => SHADER,
    }
}

/// Invocations per workgroup (one output element, or one input element, each).
const WG: u32 = 256;

/// The largest plane (H·W) global average pooling takes: one invocation loops over a plane,
/// and lavapipe stops an invocation's loops silently after 65,535 iterations; half of that
/// leaves the margin the other split kernels keep. ResNet's last maps (7×7 for 224-pixel
/// inputs) are far below it.
pub const GLOBAL_POOL_MAX_PLANE: usize = 32_768;

/// The sizes of one pooling, as the launchers check them.
#[derive(Clone, Copy)]
struct PoolParams {
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    s: u32,
    pad: u32,
}

/// The uniform the shader reads; the sizes go in as pipeline constants (see the shader).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PlaneCount {
    planes: u32,
    _pad: [u32; 3],
}

/// (OH, OW) of a `kernel`×`kernel` pooling with `stride` and padding `pad` over an H×W
/// plane, or an error naming `op` when the stride or kernel is zero, the padding is over
/// half the kernel, or the window does not fit the padded plane.
pub fn output_size(
    op: &'static str,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<(usize, usize)> {
    if kernel == 0 || stride == 0 {
        return Err(Error::Shape {
            op,
            detail: format!("kernel ({kernel}) and stride ({stride}) must both be at least 1"),
        });
    }
    // PyTorch's rule ("pad should be at most half of effective kernel size"): with more, a
    // window could lie wholly in the padding and have no element to choose.
    if pad > kernel / 2 {
        return Err(Error::Shape {
            op,
            detail: format!(
                "padding {pad} is more than half the kernel {kernel}: it must be at most \
                 {} (as in PyTorch), so that every window holds an input element",
                kernel / 2
            ),
        });
    }
    if kernel > h + 2 * pad || kernel > w + 2 * pad {
        return Err(Error::Shape {
            op,
            detail: format!(
                "a {kernel}×{kernel} window does not fit in a {h}×{w} input plane with \
                 padding {pad}"
            ),
        });
    }
    Ok((
        (h + 2 * pad - kernel) / stride + 1,
        (w + 2 * pad - kernel) / stride + 1,
    ))
}

/// Checks `x` (the input-side tensor, [N, C, H, W], f32 or f16) and the window; returns the
/// parameters, the output-side shape [N, C, OH, OW] and `x`'s element type, which the
/// launch's other float tensors must share.
fn check(
    op: &'static str,
    what: &str,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<(PoolParams, [usize; 4], DType)> {
    let (&[n, c, h, w], dtype) = expect_float_rank(op, what, x, 4)? else {
        unreachable!()
    };
    let (params, out_shape) = check_dims(op, what, [n, c, h, w], kernel, stride, pad)?;
    Ok((params, out_shape, dtype))
}

/// [`check`] on the input side's shape alone.
fn check_dims(
    op: &'static str,
    what: &str,
    [n, c, h, w]: [usize; 4],
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<(PoolParams, [usize; 4])> {
    let (oh, ow) = output_size(op, h, w, kernel, stride, pad)?;
    // The shaders index inputs and outputs with u32: the larger count must fit.
    to_u32(op, &format!("{what}'s element count"), n * c * h * w)?;
    let params = PoolParams {
        planes: to_u32(op, "N·C", n * c)?,
        h: to_u32(op, "H", h)?,
        w: to_u32(op, "W", w)?,
        oh: to_u32(op, "OH", oh)?,
        ow: to_u32(op, "OW", ow)?,
        k: to_u32(op, "kernel", kernel)?,
        s: to_u32(op, "stride", stride)?,
        pad: to_u32(op, "pad", pad)?,
    };
    Ok((params, [n, c, oh, ow]))
}

fn launch(
    gpu: &Gpu,
    entry: &'static str,
    dtype: DType,
    params: &PoolParams,
    bindings: &[(u32, &Tensor)],
    invocations: usize,
) -> Result<Kernel> {
    let groups = (invocations as u32).div_ceil(WG);
    let constants = [
        ("WG", WG as f64),
        ("H", params.h as f64),
        ("W", params.w as f64),
        ("OH", params.oh as f64),
        ("OW", params.ow as f64),
        ("K", params.k as f64),
        ("S", params.s as f64),
        ("PAD", params.pad as f64),
    ];
    let uniform = PlaneCount {
        planes: params.planes,
        _pad: [0; 3],
    };
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype),
        entry,
        &constants,
        &uniform,
        bindings,
        grid_1d(groups),
    )?))
}

/// Max pooling: `y [N, C, OH, OW]` = window maxima of `x [N, C, H, W]` padded by `pad`
/// (−∞: padded positions are never chosen), and `argmax [N, C, OH, OW]` (u32) the
/// in-plane index h·W + w of each chosen input element.
pub fn max_forward(
    gpu: &Gpu,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    y: &Tensor,
    argmax: &Tensor,
) -> Result<Kernel> {
    max_forward_entry(gpu, "max_pool2d_forward", x, kernel, stride, pad, y, argmax)
}

/// `y = relu(max_pool2d(x))` in one pass (the two commute); `argmax` is [`max_forward`]'s,
/// except where the window's max is not above 0: there it matches no element, so the max
/// backwards give ReLU's zero gradient too.
pub fn max_relu_forward(
    gpu: &Gpu,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    y: &Tensor,
    argmax: &Tensor,
) -> Result<Kernel> {
    max_forward_entry(
        gpu,
        "max_pool2d_relu_forward",
        x,
        kernel,
        stride,
        pad,
        y,
        argmax,
    )
}

/// The two max-pooling forwards share their bindings and checks; only the entry differs.
#[allow(clippy::too_many_arguments)]
fn max_forward_entry(
    gpu: &Gpu,
    op: &'static str,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    y: &Tensor,
    argmax: &Tensor,
) -> Result<Kernel> {
    let (params, out_shape, dtype) = check(op, "x", x, kernel, stride, pad)?;
    expect(op, "y", y, &out_shape, dtype)?;
    expect(op, "argmax", argmax, &out_shape, DType::U32)?;
    launch(
        gpu,
        op,
        dtype,
        &params,
        &[(1, x), (2, y), (3, argmax)],
        out_shape.iter().product(),
    )
}

/// Gradient of max pooling: `dx [N, C, H, W]`, each element the sum of the `dy` entries
/// whose `argmax` chose it (0 if none did; summed in f32, stored as dx's type). `argmax`
/// is [`max_forward`]'s, same window and padding; `dy` and `dx` share one float type.
pub fn max_backward(
    gpu: &Gpu,
    dy: &Tensor,
    argmax: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    dx: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "max_pool2d_backward";
    let (params, out_shape, dtype) = check(OP, "dx", dx, kernel, stride, pad)?;
    expect(OP, "dy", dy, &out_shape, dtype)?;
    expect(OP, "argmax", argmax, &out_shape, DType::U32)?;
    let bindings = [(4, dy), (5, argmax), (6, dx)];
    if kernel == stride && pad == 0 {
        // Windows tile the input: one invocation per k×k cell. (Padded windows straddle
        // the cells, so they take the gather below.)
        let &[n, c, h, w] = dx.shape() else {
            unreachable!("checked rank 4")
        };
        let cells = n * c * h.div_ceil(kernel) * w.div_ceil(kernel);
        return launch(
            gpu,
            "max_pool2d_backward_tiled",
            dtype,
            &params,
            &bindings,
            cells,
        );
    }
    launch(gpu, OP, dtype, &params, &bindings, dx.len())
}

/// Gradient of max pooling with windows that tile the input (`stride` = `kernel`, no
/// padding), written as texels: `dxt` receives dx `[N, C, H, W]` = `dx_shape` as
/// [`super::pack::nhwc4`] with border `border` (no unfolding) would pack it. The borders
/// are not written: `dxt` must be texels that nothing else writes, which wgpu creates
/// zeroed. For a convolution on the texel kernels, which read its gradient only so: no dx
/// store and no packing pass. `dxt` holds components of `dy`'s type (f32 texels for f32,
/// f16 texels for f16).
pub fn max_backward_texels(
    gpu: &Gpu,
    dy: &Tensor,
    argmax: &Tensor,
    kernel: usize,
    dx_shape: [usize; 4],
    dxt: &Texels,
    border: usize,
) -> Result<Kernel> {
    const OP: &str = "max_pool2d_backward_tex";
    let [n, c, h, w] = dx_shape;
    let (params, out_shape) = check_dims(OP, "dx", dx_shape, kernel, kernel, 0)?;
    let dtype = float_dtype(OP, "dy", dy)?;
    expect(OP, "dy", dy, &out_shape, dtype)?;
    expect(OP, "argmax", argmax, &out_shape, DType::U32)?;
    if dxt.dtype() != dtype {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "dy is {dtype:?} but the dx texels hold {:?} components: they must match \
                 (allocate them with texels_of(len, {dtype:?}))",
                dxt.dtype()
            ),
        });
    }
    let c4 = c.div_ceil(4);
    let texels = n * (h + 2 * border) * (w + 2 * border) * c4;
    if dxt.len() != texels {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "{} texels given, dx {dx_shape:?} with border {border} packs into {texels}",
                dxt.len()
            ),
        });
    }
    let invocations = n * h.div_ceil(kernel) * w.div_ceil(kernel) * c4;
    let constants = [
        ("WG", WG as f64),
        ("H", params.h as f64),
        ("W", params.w as f64),
        ("OH", params.oh as f64),
        ("OW", params.ow as f64),
        ("K", params.k as f64),
        ("S", params.s as f64),
        ("C", c as f64),
        ("BORDER", to_u32(OP, "border", border)? as f64),
    ];
    let uniform = PlaneCount {
        planes: params.planes,
        _pad: [0; 3],
    };
    let groups = grid_1d(to_u32(OP, "cells", invocations)?.div_ceil(WG));
    Ok(Kernel::single(gpu.dispatch_with_texels(
        &shader(dtype),
        OP,
        &constants,
        &uniform,
        &[(4, dy), (5, argmax)],
        &[(7, dxt)],
        groups,
    )?))
}

/// Average pooling: `y [N, C, OH, OW]` = window means of `x [N, C, H, W]`, no padding
/// (summed in f32, stored as y's type, which is x's).
pub fn avg_forward(
    gpu: &Gpu,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    y: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "avg_pool2d_forward";
    let (params, out_shape, dtype) = check(OP, "x", x, kernel, stride, 0)?;
    expect(OP, "y", y, &out_shape, dtype)?;
    launch(
        gpu,
        OP,
        dtype,
        &params,
        &[(1, x), (2, y)],
        out_shape.iter().product(),
    )
}

/// Gradient of average pooling: `dx [N, C, H, W]`, each element the sum over the windows
/// containing it of `dy / kernel²` (summed in f32, stored as dx's type, which is dy's).
pub fn avg_backward(
    gpu: &Gpu,
    dy: &Tensor,
    kernel: usize,
    stride: usize,
    dx: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "avg_pool2d_backward";
    let (params, out_shape, dtype) = check(OP, "dx", dx, kernel, stride, 0)?;
    expect(OP, "dy", dy, &out_shape, dtype)?;
    launch(gpu, OP, dtype, &params, &[(4, dy), (6, dx)], dx.len())
}

/// A global average pooling's entry on the planes of `x [N, C, H, W]` = `x_shape` (at most
/// [`GLOBAL_POOL_MAX_PLANE`] elements each), with `invocations` invocations. Only the plane
/// size goes in as pipeline constants: there is no window.
fn launch_global(
    gpu: &Gpu,
    entry: &'static str,
    dtype: DType,
    [n, c, h, w]: [usize; 4],
    bindings: &[(u32, &Tensor)],
    invocations: usize,
) -> Result<Kernel> {
    if h * w > GLOBAL_POOL_MAX_PLANE {
        return Err(Error::Shape {
            op: entry,
            detail: format!(
                "a {h}×{w} plane has {} elements, over the {GLOBAL_POOL_MAX_PLANE} one \
                 invocation may sum (lavapipe stops an invocation's loops after 65,535 \
                 iterations): pool or stride the map down before the global pooling",
                h * w
            ),
        });
    }
    let uniform = PlaneCount {
        planes: to_u32(entry, "N·C", n * c)?,
        _pad: [0; 3],
    };
    let constants = [
        ("WG", WG as f64),
        ("H", to_u32(entry, "H", h)? as f64),
        ("W", to_u32(entry, "W", w)? as f64),
    ];
    let groups = to_u32(entry, "the invocation count", invocations)?.div_ceil(WG);
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype),
        entry,
        &constants,
        &uniform,
        bindings,
        grid_1d(groups),
    )?))
}

/// Global average pooling: `y [N, C]` = the mean of each plane of `x [N, C, H, W]` (summed
/// in order in f32, stored as y's type, which is x's). H·W ≤ [`GLOBAL_POOL_MAX_PLANE`].
pub fn global_avg_forward(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Kernel> {
    const OP: &str = "global_avg_pool2d_forward";
    let (&[n, c, h, w], dtype) = expect_float_rank(OP, "x", x, 4)? else {
        unreachable!()
    };
    expect(OP, "y", y, &[n, c], dtype)?;
    launch_global(gpu, OP, dtype, [n, c, h, w], &[(1, x), (2, y)], n * c)
}

/// Gradient of global average pooling: `dx [N, C, H, W]` = `dy [N, C]` / (H·W), spread
/// over each plane (stored as dx's type, which is dy's).
pub fn global_avg_backward(gpu: &Gpu, dy: &Tensor, dx: &Tensor) -> Result<Kernel> {
    const OP: &str = "global_avg_pool2d_backward";
    let (&[n, c, h, w], dtype) = expect_float_rank(OP, "dx", dx, 4)? else {
        unreachable!()
    };
    expect(OP, "dy", dy, &[n, c], dtype)?;
    launch_global(gpu, OP, dtype, [n, c, h, w], &[(4, dy), (6, dx)], dx.len())
}
