//! Launchers for `shaders/residual.wgsl`: the addition that closes a residual (ResNet)
//! block, `y = a + b`, and the fused `y = relu(a + b)` that ends every basic block, forward
//! and backward, elementwise over f32 or f16 tensors of one shape (all of one launch's
//! tensors share the type; f16 sums in f32 and rounds once on store).
//!
//! The backwards hand both inputs the same gradient (dy, or dy·[y > 0] for the fused op),
//! written into each input's gradient buffer; either input may need none, and then only the
//! other is written.

use bytemuck::{Pod, Zeroable};

use super::{expect, float_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, grid_1d};

pub const SHADER: Shader = Shader::new("residual", include_str!("../../shaders/residual.wgsl"));

/// Invocations per workgroup (one element each).
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ElementwiseParams {
    len: u32,
    _pad: [u32; 3],
}

/// The shader with every tensor of type `dtype`.
fn shader(dtype: DType) -> Shader {
    match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    }
}

/// Checks that every tensor has `shape` and the first tensor's float type, then launches.
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    shape: &[usize],
    tensors: &[(&str, u32, &Tensor)],
) -> Result<Kernel> {
    let dtype = float_dtype(entry, tensors[0].0, tensors[0].2)?;
    for &(what, _, t) in tensors {
        expect(entry, what, t, shape, dtype)?;
    }
    let bindings: Vec<(u32, &Tensor)> = tensors.iter().map(|&(_, b, t)| (b, t)).collect();
    let len = to_u32(entry, "the element count", shape.iter().product())?;
    let params = ElementwiseParams { len, _pad: [0; 3] };
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype),
        entry,
        &[("WG", WG as f64)],
        &params,
        &bindings,
        grid_1d(len.div_ceil(WG)),
    )?))
}

/// `y = a + b`, elementwise; `b` and `y` have `a`'s shape and type.
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    launch(
        gpu,
        "add_forward",
        a.shape(),
        &[("a", 1, a), ("b", 2, b), ("y", 3, y)],
    )
}

/// `y = max(a + b, 0)`, elementwise, in one pass; `b` and `y` have `a`'s shape and type.
pub fn add_relu(gpu: &Gpu, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    launch(
        gpu,
        "add_relu_forward",
        a.shape(),
        &[("a", 1, a), ("b", 2, b), ("y", 3, y)],
    )
}

/// The gradients of [`add`]: `da` and `db`, where given, both receive `dy`. At least one
/// must be given; they share `dy`'s shape and type.
pub fn add_backward(
    gpu: &Gpu,
    dy: &Tensor,
    da: Option<&Tensor>,
    db: Option<&Tensor>,
) -> Result<Kernel> {
    match (da, db) {
        (Some(da), Some(db)) => launch(
            gpu,
            "add_backward",
            dy.shape(),
            &[("dy", 5, dy), ("da", 6, da), ("db", 7, db)],
        ),
        (Some(dx), None) | (None, Some(dx)) => launch(
            gpu,
            "add_backward_single",
            dy.shape(),
            &[("dy", 5, dy), ("the input's gradient", 6, dx)],
        ),
        (None, None) => Err(neither("add_backward")),
    }
}

/// The gradients of [`add_relu`], from its output `y`: `da` and `db`, where given, both
/// receive `dy·[y > 0]`. At least one must be given; all share `dy`'s shape and type.
pub fn add_relu_backward(
    gpu: &Gpu,
    y: &Tensor,
    dy: &Tensor,
    da: Option<&Tensor>,
    db: Option<&Tensor>,
) -> Result<Kernel> {
    const SAVED: &str = "saved (the forward output y)";
    match (da, db) {
        (Some(da), Some(db)) => launch(
            gpu,
            "add_relu_backward",
            dy.shape(),
            &[("dy", 5, dy), (SAVED, 4, y), ("da", 6, da), ("db", 7, db)],
        ),
        (Some(dx), None) | (None, Some(dx)) => launch(
            gpu,
            "add_relu_backward_single",
            dy.shape(),
            &[
                ("dy", 5, dy),
                (SAVED, 4, y),
                ("the input's gradient", 6, dx),
            ],
        ),
        (None, None) => Err(neither("add_relu_backward")),
    }
}

/// The error of a backward asked to write no gradient at all.
fn neither(op: &'static str) -> Error {
    Error::Shape {
        op,
        detail: "neither input's gradient was given: there is nothing to write".into(),
    }
}
