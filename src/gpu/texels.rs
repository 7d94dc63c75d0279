//! [`Texels`]: a linear array of `vec4<f32>` held in an rgba32float 2-D texture (or of
//! f16 components in an rgba16float one, for mixed precision; shaders read both as
//! `vec4<f32>`).
//!
//! On lavapipe a storage-buffer load is done lane by lane, while a texel fetch takes
//! llvmpipe's vectorised path (see docs/ARCHITECTURE.md, "Kernel paths"): the matmul and
//! convolution kernels read their operands as texels. Texel `i` sits at
//! `(i % TEXEL_ROW, i / TEXEL_ROW)`; shaders compute that with a mask and a shift.

use std::sync::Arc;

use super::DType;

/// Texels per texture row (shaders hard-code `i & 4095u`, `i >> 12u`).
pub const TEXEL_ROW: usize = 4096;

/// `len` texels of four components each. Cloning shares the texture.
#[derive(Debug, Clone)]
pub struct Texels {
    pub(crate) texture: Arc<wgpu::Texture>,
    pub(crate) view: wgpu::TextureView,
    len: usize,
    dtype: DType,
}

impl Texels {
    pub(crate) fn new(texture: wgpu::Texture, len: usize, dtype: DType) -> Self {
        let view = texture.create_view(&Default::default());
        Texels {
            texture: Arc::new(texture),
            view,
            len,
            dtype,
        }
    }

    /// The components' type: f32 (rgba32float) or f16 (rgba16float).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of texels.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows of the texture that hold the texels.
    pub fn rows(&self) -> u32 {
        self.len.div_ceil(TEXEL_ROW).max(1) as u32
    }
}
