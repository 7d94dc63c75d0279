//! Launchers for `shaders/conv2d.wgsl`: 2-D convolution, NCHW, PyTorch's weight layout
//! `[out, in, kh, kw]`, stride and zero padding, with its three gradients.
//!
//! Each entry point has a launcher, on storage buffers (`storage`, any geometry) or on
//! operands packed into texels (`texels`, any stride, square kernels with padding under
//! their size); [`plan`] composes them into the kernels of one convolution as
//! [`Conv2dKernels`](crate::gpu::Conv2dKernels) (the device's
//! [`Policy`](crate::gpu::Policy)) names them. Everything outside this module builds
//! convolutions through the plan.
//!
//! Mixed precision: the activations and their gradients (x, y, dy, dx) and the weights and
//! bias a launcher reads (w, b: the f16 copies of the master weights) are all f32 or all
//! f16, the type read off the tensors; weight and bias gradients (dw, db) are always f32.
//! Every sum is accumulated in f32. Texels passed in must hold the components of that type
//! too ([`pack`](super::pack) makes f16 texels of f16 tensors).

mod plan;
mod storage;
mod texels;

use bytemuck::{Pod, Zeroable};

pub use self::plan::{Conv2dGrads, Conv2dPlan, Conv2dTensors, plan};
use super::{expect_float_rank, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Shader, Tensor, Texels};
use crate::vocab::Conv2dGeometry;

/// The launcher of each entry point, which [`plan`] composes. Public for the kernel tests,
/// which drive one entry with operands of their own (every split count, texels packed
/// wrongly on purpose); anything else builds convolutions through [`plan`].
#[doc(hidden)]
pub mod kernels {
    pub use super::storage::{
        forward, grad_bias, grad_input, grad_weight, grad_weight_reduce, grad_weight_split,
    };
    pub use super::texels::{
        forward_packed, forward_packed_images4, forward_tex, forward_tex_images4, grad_input_tex,
        grad_weight_tex,
    };
}

pub const SHADER: Shader = Shader::new("conv2d", include_str!("../../../shaders/conv2d.wgsl"));

/// What the shader's `out` binding receives: an activation or its gradient (y, dx), of the
/// inputs' type, or a weight or bias gradient or its partial sums, always f32.
#[derive(Clone, Copy)]
enum Out {
    Activation,
    Gradient,
}

/// The shader for inputs (x, dy, w, b: `elem`) of `dtype`, with `out` (`out_elem`) as `out`
/// says. For f32 inputs, the file as written.
fn shader(dtype: DType, out: Out) -> Shader {
    match (dtype, out) {
        (DType::F16, Out::Activation) => SHADER.with_f16(F16Variant {
            aliases: &["elem", "out_elem"],
            texels: false,
        }),
        (DType::F16, Out::Gradient) => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    }
}

/// Fails unless texels `t` hold components of `dtype`, the type of the op's other operands
/// (`other`: "y is", "the dy texels hold", ...).
fn expect_texels(
    op: &'static str,
    what: &str,
    t: &Texels,
    dtype: DType,
    other: &str,
) -> Result<()> {
    if t.dtype() == dtype {
        return Ok(());
    }
    Err(Error::Shape {
        op,
        detail: format!(
            "{what} hold {:?} components but {other} {dtype:?}; the texels must be packed \
             from tensors of the op's type",
            t.dtype()
        ),
    })
}

/// llvmpipe stops an invocation's loops after 65,535 iterations in all, silently (the
/// gradient comes out partly zero). grad_weight splits its reduction so that no invocation
/// walks more output positions than this, half that limit; elsewhere the extra splits only
/// appear for reductions far longer than the reference network's.
const MAX_POSITIONS_PER_INVOCATION: usize = 32_768;

impl Conv2dGeometry {
    /// Reads the geometry off an input and a weight tensor (each f32 or f16; the launchers
    /// check their types), checking that they fit.
    pub fn of(op: &'static str, x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, wd], _) = expect_float_rank(op, "x", x, 4)? else {
            unreachable!()
        };
        let (&[o, wc, kh, kw], _) = expect_float_rank(op, "w", w, 4)? else {
            unreachable!()
        };
        Self::checked(
            op,
            Conv2dGeometry {
                n,
                c,
                h,
                w: wd,
                o,
                kh,
                kw,
                stride,
                pad,
            },
            wc,
        )
    }

    fn checked(op: &'static str, g: Self, weight_channels: usize) -> Result<Self> {
        let fail = |detail: String| Err(Error::Shape { op, detail });
        if weight_channels != g.c {
            return fail(format!(
                "w has {weight_channels} input channels but x has {}",
                g.c
            ));
        }
        if g.stride == 0 {
            return fail("stride must be at least 1".into());
        }
        if g.h + 2 * g.pad < g.kh || g.w + 2 * g.pad < g.kw {
            return fail(format!(
                "a {}x{} kernel does not fit a {}x{} input with padding {}",
                g.kh, g.kw, g.h, g.w, g.pad
            ));
        }
        Ok(g)
    }

    fn params(&self, op: &'static str, splits: u32, images_per_split: u32) -> Result<ConvParams> {
        let u = |what, v| to_u32(op, what, v);
        // The largest tensor must be indexable in 32 bits (the shader's index type).
        u("input elements", self.n * self.c * self.h * self.w)?;
        u(
            "output elements",
            self.n * self.o * self.out_h() * self.out_w(),
        )?;
        Ok(ConvParams {
            n: u("N", self.n)?,
            c: u("C", self.c)?,
            h: u("H", self.h)?,
            w: u("W", self.w)?,
            o: u("O", self.o)?,
            kh: u("KH", self.kh)?,
            kw: u("KW", self.kw)?,
            stride: u("stride", self.stride)?,
            pad: u("pad", self.pad)?,
            oh: u("OH", self.out_h())?,
            ow: u("OW", self.out_w())?,
            splits,
            images_per_split,
            unfold: 1,
            bias_partials: 0,
            dy_pad: 0,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    splits: u32,
    images_per_split: u32,
    unfold: u32,
    bias_partials: u32,
    dy_pad: u32,
}
