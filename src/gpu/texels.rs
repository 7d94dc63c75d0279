//! [`Texels`]: a linear array of `vec4<f32>` held in an rgba32float 2-D texture.
//!
//! On lavapipe a storage-buffer load is done lane by lane, while a texel fetch takes
//! llvmpipe's vectorised path (see DESIGN.md, "Performance design"): the matmul and
//! convolution kernels read their operands as texels. Texel `i` sits at
//! `(i % TEXEL_ROW, i / TEXEL_ROW)`; shaders compute that with a mask and a shift.

use std::sync::Arc;

/// Texels per texture row (shaders hard-code `i & 4095u`, `i >> 12u`).
pub const TEXEL_ROW: usize = 4096;

/// `len` texels of four f32 each. Cloning shares the texture.
#[derive(Debug, Clone)]
pub struct Texels {
    pub(crate) texture: Arc<wgpu::Texture>,
    pub(crate) view: wgpu::TextureView,
    len: usize,
}

impl Texels {
    pub(crate) fn new(texture: wgpu::Texture, len: usize) -> Self {
        let view = texture.create_view(&Default::default());
        Texels {
            texture: Arc::new(texture),
            view,
            len,
        }
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
