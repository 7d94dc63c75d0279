//! The one place a gradient passes between two ops as texels instead of a tensor.
//!
//! A convolution on the texel kernels reads its output's gradient dy only as texels: its
//! plan packs dy once for both products (with grad_input's border when grad_input takes
//! part) and hands those texels over as [`DyTexels`], with the packing that fills them. If
//! the value's only consumer is a max-pooling whose windows tile its input, the pooling's
//! backward writes the texels itself ([`pool::max_backward_texels`]): no store of dy and no
//! packing pass. A padded pooling's windows straddle the cells, so it does not take them. With any other consumer, or more than one, dy is summed in its buffer as
//! usual and packed. Which consumers a value has is known only once the whole graph is
//! recorded, so the tape asks `DyTexels::written_by_consumer` during its backward walk.

use super::pool;
use crate::error::Result;
use crate::gpu::{Gpu, Kernel, Tensor, Texels};

/// The gradient of a convolution's output as its texel kernels read it (the layout of
/// [`pack::nhwc4`](super::pack::nhwc4) with border `pad`, no unfolding), and the kernels
/// that can fill it.
pub struct DyTexels {
    texels: Texels,
    pad: usize,
    /// Packs the gradient tensor into `texels`.
    pack: Kernel,
    /// The first consumer's backward writing `texels` directly, where it can.
    consumer_write: Option<Kernel>,
}

impl DyTexels {
    pub(crate) fn new(texels: Texels, pad: usize, pack: Kernel) -> DyTexels {
        DyTexels {
            texels,
            pad,
            pack,
            consumer_write: None,
        }
    }

    /// The packing of the gradient tensor into the texels, which runs (after the gradient's
    /// sum) unless the consumer writes them.
    pub fn pack(&self) -> &Kernel {
        &self.pack
    }

    /// Offers the texels to a max-pooling that is the first consumer of the value: with
    /// windows that tile its input (`kernel` = `stride`, no padding), the pooling's backward
    /// from `dy` and `argmax` can write the value's gradient `[N, C, H, W]` = `x_shape` as
    /// these texels. Returns whether it can.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn offer_max_pool(
        &mut self,
        gpu: &Gpu,
        dy: &Tensor,
        argmax: &Tensor,
        kernel: usize,
        stride: usize,
        pad: usize,
        x_shape: [usize; 4],
    ) -> Result<bool> {
        if kernel != stride || pad != 0 {
            return Ok(false);
        }
        let write =
            pool::max_backward_texels(gpu, dy, argmax, kernel, x_shape, &self.texels, self.pad)?;
        self.consumer_write = Some(write);
        Ok(true)
    }

    /// The consumer's backward that writes the texels, to run in place of its usual one,
    /// when it took the offer and is the value's only consumer (`consumers` of them);
    /// `None` where the gradient is summed and packed instead.
    pub(crate) fn written_by_consumer(&self, consumers: usize) -> Option<&Kernel> {
        self.consumer_write.as_ref().filter(|_| consumers == 1)
    }
}
