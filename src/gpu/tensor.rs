//! A tensor is a typed, shaped view of a storage buffer on the device.

use std::sync::Arc;

/// Element type of a [`Tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U32,
    F16,
}

impl DType {
    pub fn size_bytes(self) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// Buffer + byte offset + shape + dtype, row-major. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub(crate) buffer: Arc<wgpu::Buffer>,
    pub(crate) offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl Tensor {
    pub(crate) fn new(
        buffer: Arc<wgpu::Buffer>,
        offset: u64,
        shape: &[usize],
        dtype: DType,
    ) -> Self {
        Tensor {
            buffer,
            offset,
            shape: shape.to_vec(),
            dtype,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the elements occupy (f16 tensors round up to whole 4-byte words).
    pub fn byte_size(&self) -> u64 {
        (self.len() as u64 * self.dtype.size_bytes()).div_ceil(4) * 4
    }

    /// Size of dimension `axis`.
    pub fn dim(&self, axis: usize) -> usize {
        self.shape[axis]
    }

    /// The same elements under another shape with as many elements (no copy).
    pub fn reshaped(&self, shape: &[usize]) -> Option<Tensor> {
        (shape.iter().product::<usize>() == self.len())
            .then(|| Tensor::new(self.buffer.clone(), self.offset, shape, self.dtype))
    }

    /// A view of `shape` starting `offset_elems` elements into this tensor. Storage bindings
    /// need the byte offset aligned to the device's `min_storage_buffer_offset_alignment`
    /// (256 on most adapters), which the caller's layout must respect.
    pub fn view(&self, offset_elems: usize, shape: &[usize]) -> Option<Tensor> {
        let count: usize = shape.iter().product();
        (offset_elems + count <= self.len()).then(|| {
            let offset = self.offset + offset_elems as u64 * self.dtype.size_bytes();
            Tensor::new(self.buffer.clone(), offset, shape, self.dtype)
        })
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.byte_size()),
        })
    }
}
