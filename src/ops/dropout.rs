//! Launchers for `shaders/dropout.wgsl`: dropout as PyTorch's `nn.Dropout(p)` in training
//! (each element zeroed with probability p, the survivors scaled by 1/(1 − p)) and its
//! gradient, elementwise over f32 or f16 tensors of any shape (x and y, or dy and dx, share
//! the type; f16 multiplies in f32 and rounds once on store).
//!
//! The mask is drawn on the GPU by a counter-based generator (Philox4x32-10, keyed by the
//! seed and the layer's `stream`, counted by the element and the step; `cpu::dropout` is
//! its reference), so nothing is stored between forward and backward: both read the same
//! `rng` tensor, `[2]` u32 = `[seed, step]`, which the trainer rewrites before each step,
//! and the backward recomputes the forward's mask. A run is so bit-reproducible from its
//! seed and resumes exactly; two layers with different streams draw independent masks.
//!
//! Evaluation records no dropout at all (it is the identity there); p = 0 is the identity
//! too (every element kept, the factor 1).

use bytemuck::{Pod, Zeroable};

use super::{expect, float_dtype, to_u32};
use crate::cpu::dropout as reference;
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, grid_1d};

pub const SHADER: Shader = Shader::new("dropout", include_str!("../../shaders/dropout.wgsl"));

/// Invocations per workgroup (one block of four elements each: one Philox call).
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DropoutParams {
    len: u32,
    threshold: u32,
    stream: u32,
    scale: f32,
}

/// The shader with its x, y, dy and dx of type `dtype` (rng stays u32).
fn shader(dtype: DType) -> Shader {
    match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    }
}

/// Fails unless `p` is a dropout probability PyTorch accepts for training, [0, 1) (p = 1
/// would zero every element and scale by 1/0).
pub fn check_p(op: &'static str, p: f32) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Shape {
            op,
            detail: format!(
                "the dropout probability p = {p} must be in [0, 1): the chance that an \
                 element is zeroed (p = 1 would zero all and scale the rest by 1/0)"
            ),
        });
    }
    Ok(())
}

/// Checks the pair (`input`, `output`) of one float type and shape, `p` and `rng`; launches.
#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    input: (&str, u32, &Tensor),
    output: (&str, u32, &Tensor),
    p: f32,
    rng: &Tensor,
    stream: u32,
) -> Result<Kernel> {
    check_p(entry, p)?;
    let dtype = float_dtype(entry, input.0, input.2)?;
    expect(entry, output.0, output.2, input.2.shape(), dtype)?;
    expect(entry, "rng ([seed, step])", rng, &[2], DType::U32)?;
    // The shader counts blocks as ⌈len/4⌉ = (len + 3)/4 in u32.
    to_u32(entry, "the element count + 3", input.2.len() + 3)?;
    let len = to_u32(entry, "the element count", input.2.len())?;
    let params = DropoutParams {
        len,
        threshold: reference::threshold(p),
        stream,
        scale: reference::scale(p) as f32,
    };
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype),
        entry,
        &[("WG", WG as f64)],
        &params,
        &[(input.1, input.2), (output.1, output.2), (3, rng)],
        grid_1d(len.div_ceil(4).div_ceil(WG)),
    )?))
}

/// `y = x·keep/(1 − p)`, elementwise: dropout in training. The mask `keep` is drawn from
/// `rng` (`[2]` u32: `[seed, step]`, read when the kernel runs) and `stream`; `y` has `x`'s
/// shape and type. p must be in [0, 1).
pub fn forward(
    gpu: &Gpu,
    x: &Tensor,
    p: f32,
    rng: &Tensor,
    stream: u32,
    y: &Tensor,
) -> Result<Kernel> {
    launch(
        gpu,
        "dropout_forward",
        ("x", 1, x),
        ("y", 2, y),
        p,
        rng,
        stream,
    )
}

/// `dx = dy·keep/(1 − p)`: the gradient of [`forward`], its mask recomputed from the same
/// `p`, `rng` and `stream` (rng must hold the values the forward read).
pub fn backward(
    gpu: &Gpu,
    dy: &Tensor,
    p: f32,
    rng: &Tensor,
    stream: u32,
    dx: &Tensor,
) -> Result<Kernel> {
    launch(
        gpu,
        "dropout_backward",
        ("dy", 4, dy),
        ("dx", 5, dx),
        p,
        rng,
        stream,
    )
}
