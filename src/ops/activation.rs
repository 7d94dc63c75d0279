//! Launchers for `shaders/activation.wgsl`: ReLU, sigmoid and tanh, forward and backward,
//! elementwise over f32 or f16 tensors of any shape (all of one op's tensors share the type) (tens of millions of elements included: the
//! workgroup grid is folded past 65535 workgroups).
//!
//! Not in place: the input and output must be different buffers, since wgpu refuses one
//! buffer bound read-only and read-write in the same dispatch.

use bytemuck::{Pod, Zeroable};

use super::{expect, float_dtype, to_u32};
use crate::error::Result;
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, grid_1d};

pub const SHADER: Shader = Shader::new("activation", include_str!("../../shaders/activation.wgsl"));

/// Invocations per workgroup (one element each).
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ElementwiseParams {
    len: u32,
    _pad: [u32; 3],
}

/// An elementwise activation. Its backward needs one saved tensor from the forward, and
/// which one depends on the activation (its derivative is cheapest in it):
///
/// | activation | forward       | backward `saved` | backward                 |
/// |------------|---------------|------------------|--------------------------|
/// | `Relu`     | max(x, 0)     | the input x      | dx = dy·[x > 0]          |
/// | `Sigmoid`  | 1/(1 + e^−x)  | the output y     | dx = dy·y·(1 − y)        |
/// | `Tanh`     | tanh(x)       | the output y     | dx = dy·(1 − y²)         |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
}

impl Activation {
    /// The WGSL entry point of the forward.
    pub fn forward_entry(self) -> &'static str {
        match self {
            Activation::Relu => "relu_forward",
            Activation::Sigmoid => "sigmoid_forward",
            Activation::Tanh => "tanh_forward",
        }
    }

    /// The WGSL entry point of the backward.
    pub fn backward_entry(self) -> &'static str {
        match self {
            Activation::Relu => "relu_backward",
            Activation::Sigmoid => "sigmoid_backward",
            Activation::Tanh => "tanh_backward",
        }
    }

    /// Whether the backward takes the forward's output (true) or its input (false).
    pub fn backward_takes_output(self) -> bool {
        !matches!(self, Activation::Relu)
    }
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

/// `y = act(x)`, elementwise; `y` has `x`'s shape.
pub fn forward(gpu: &Gpu, act: Activation, x: &Tensor, y: &Tensor) -> Result<Kernel> {
    launch(
        gpu,
        act.forward_entry(),
        x.shape(),
        &[("x", 1, x), ("y", 2, y)],
    )
}

/// `dx = dy·act'(…)`, elementwise. `saved` is the forward's input x for [`Activation::Relu`]
/// and its output y for [`Activation::Sigmoid`] and [`Activation::Tanh`]; `saved`, `dy` and
/// `dx` share one shape.
pub fn backward(
    gpu: &Gpu,
    act: Activation,
    saved: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Kernel> {
    let what = if act.backward_takes_output() {
        "saved (the forward output y)"
    } else {
        "saved (the forward input x)"
    };
    launch(
        gpu,
        act.backward_entry(),
        dy.shape(),
        &[("dy", 4, dy), (what, 3, saved), ("dx", 5, dx)],
    )
}

/// `dx += dy`, elementwise: how the tape sums the gradients of a value that feeds several ops.
pub fn accumulate_grad(gpu: &Gpu, dy: &Tensor, dx: &Tensor) -> Result<Kernel> {
    launch(
        gpu,
        "accumulate_grad",
        dy.shape(),
        &[("dy", 4, dy), ("dx", 5, dx)],
    )
}
