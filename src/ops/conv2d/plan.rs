//! The kernels of one convolution, forward and backward, as [`Conv2dKernels`] names them:
//! what the tape records for a `conv2d`.

use super::{storage, texels};
use crate::error::Result;
use crate::gpu::{Conv2dKernels, ConvForward, Gpu, Kernel, Operands, Tensor, Texels};
use crate::ops::handoff::DyTexels;
use crate::ops::pack;
use crate::vocab::Conv2dGeometry;

/// The forward's tensors, `y = conv2d(x, w) + b`, and its stride and padding.
pub struct Conv2dTensors<'a> {
    pub x: &'a Tensor,
    pub w: &'a Tensor,
    pub b: &'a Tensor,
    pub y: &'a Tensor,
    pub stride: usize,
    pub pad: usize,
}

/// The backward's tensors: the gradient `dy` of y, and each of dx, dw and db where one is
/// wanted.
pub struct Conv2dGrads<'a> {
    pub dy: &'a Tensor,
    pub dx: Option<&'a Tensor>,
    pub dw: Option<&'a Tensor>,
    pub db: Option<&'a Tensor>,
}

/// The kernels of one convolution.
pub struct Conv2dPlan {
    pub forward: Kernel,
    /// The gradients' kernels in order; where only texel kernels read dy, after its
    /// packing, which [`dy_texels`](Self::dy_texels) then holds.
    pub backward: Vec<Kernel>,
    /// dy as the texel products read it, when nothing else reads dy: the packing runs
    /// before `backward`, unless dy's consumer writes the texels itself (see
    /// [`handoff`](crate::ops::handoff)).
    pub dy_texels: Option<DyTexels>,
}

/// The convolution's kernels: its forward, and with `grads` the kernels writing them.
/// Texel kernels are refused where they do not cover the geometry (see
/// [`Conv2dGeometry::texel_path_fits`]). A texel grad_weight reads x as the texel forward
/// packed it, or packs it itself (after a storage or images-in-lanes forward); the texel
/// products share one packing of dy.
pub fn plan(
    gpu: &Gpu,
    t: &Conv2dTensors,
    grads: Option<&Conv2dGrads>,
    kernels: Conv2dKernels,
) -> Result<Conv2dPlan> {
    let g = Conv2dGeometry::of("conv2d", t.x, t.w, t.stride, t.pad)?;
    if kernels != Conv2dKernels::STORAGE {
        texels::expect_texel_path("conv2d", &g)?;
    }
    let (forward, packed_x) = match kernels.forward {
        ConvForward::Storage => (
            storage::forward(gpu, t.x, t.w, t.b, t.y, t.stride, t.pad)?,
            None,
        ),
        ConvForward::Texels => {
            let (kernel, xt) = texels::forward_packed(gpu, t.x, t.w, t.b, t.y, t.stride, t.pad)?;
            (kernel, Some(xt))
        }
        ConvForward::ImagesInLanes => (
            texels::forward_packed_images4(gpu, t.x, t.w, t.b, t.y, t.stride, t.pad)?,
            None,
        ),
    };
    let (backward, dy_texels) = match grads {
        Some(grads) => backward(gpu, &g, t, grads, kernels, packed_x)?,
        None => (Vec::new(), None),
    };
    Ok(Conv2dPlan {
        forward,
        backward,
        dy_texels,
    })
}

fn backward(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    t: &Conv2dTensors,
    grads: &Conv2dGrads,
    kernels: Conv2dKernels,
    packed_x: Option<Texels>,
) -> Result<(Vec<Kernel>, Option<DyTexels>)> {
    let &Conv2dGrads { dy, dx, dw, db } = grads;
    let input_tex = dx.is_some() && kernels.grad_input == Operands::Texels;
    let weight_tex = dw.is_some() && kernels.grad_weight == Operands::Texels;
    // With grad_input on texels, dy is packed with its border (grad_weight reads past it).
    let dy_pad = if input_tex { g.grad_input_pad() } else { 0 };
    let packed_dy = if input_tex || weight_tex {
        Some(pack::nhwc4(gpu, dy, dy_pad, 1)?)
    } else {
        None
    };
    let dyt = packed_dy.as_ref().map(|(_, dyt)| dyt);
    let mut backward = Vec::new();
    if let Some(dx) = dx {
        backward.push(match dyt {
            Some(dyt) if input_tex => texels::grad_input_tex(gpu, dyt, t.w, dx, t.stride, t.pad)?,
            _ => storage::grad_input(gpu, dy, t.w, dx, t.stride, t.pad)?,
        });
    }
    match (dw, dyt) {
        // The texel grad_weight also sums the bias gradient from the dy it fetches.
        (Some(dw), Some(dyt)) if weight_tex => {
            let (pack_x, xt) = match packed_x {
                Some(xt) => (None, xt),
                None => {
                    let (kernel, xt) = pack::nhwc4(gpu, t.x, t.pad, g.unfold())?;
                    (Some(kernel), xt)
                }
            };
            let product = texels::grad_weight_tex(gpu, g, &xt, dyt, dy_pad, dw, db)?;
            backward.push(Kernel::chain(pack_x.into_iter().chain([product])));
        }
        _ => {
            if let Some(dw) = dw {
                backward.push(storage::grad_weight(gpu, dy, t.x, dw, t.stride, t.pad)?);
            }
            if let Some(db) = db {
                backward.push(storage::grad_bias(gpu, dy, db)?);
            }
        }
    }
    let storage_reads_dy =
        dx.is_some() && !input_tex || !weight_tex && (dw.is_some() || db.is_some());
    Ok(match packed_dy {
        Some((pack, _)) if storage_reads_dy => {
            backward.insert(0, pack);
            (backward, None)
        }
        Some((pack, texels)) => (backward, Some(DyTexels::new(texels, dy_pad, pack))),
        None => (backward, None),
    })
}
