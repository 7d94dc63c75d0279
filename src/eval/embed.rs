//! Embedding an image set on the GPU: a forward-only tape of the model (parameters as
//! constants, no gradients) over fixed chunks of images gathered from the packed set.

use crate::autograd::Tape;
use crate::error::Result;
use crate::gpu::{DType, Gpu, Kernel, Tensor};
use crate::model::{ModelTensors, SiameseModel};
use crate::ops::gather::{self, PackedImages, Stager};
use crate::vocab::PixelNorm;

/// A built embedding program for chunks of images.
pub struct Embedder<'g> {
    gpu: &'g Gpu,
    chunk: usize,
    indices: Tensor,
    input: Tensor,
    forward: Vec<Kernel>,
    output: Tensor,
    norm: PixelNorm,
    dim: usize,
}

impl<'g> Embedder<'g> {
    /// Builds the forward program of `model` with its `values`, in evaluation mode, for
    /// chunks of `chunk` images, or fewer where the tower's largest activation for `chunk`
    /// would exceed one storage binding (large images; each image's embedding is the same
    /// whatever the chunk).
    pub fn new(
        gpu: &'g Gpu,
        model: &SiameseModel,
        values: &ModelTensors,
        norm: PixelNorm,
        chunk: usize,
    ) -> Result<Self> {
        let limit = gpu.limits().max_storage_buffer_binding_size;
        let chunk = chunk.min(model.tower.images_that_fit(limit));
        let [c, h, w] = model.config.input;
        let indices = gpu.zeros(&[chunk], DType::U32)?;
        let input = gpu.zeros(&[chunk, c, h, w], DType::F32)?;
        let mut tape = Tape::new(gpu);
        let x = tape.input(input.clone());
        let e = model.record_embedding(&mut tape, x, &values.eval())?;
        let output = tape.tensor(e).clone();
        let forward = tape.forward_kernels().cloned().collect();
        Ok(Embedder {
            gpu,
            chunk,
            indices,
            input,
            forward,
            output,
            norm,
            dim: model.embedding_dim(),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Images per dispatch (what `new` was asked for, or fewer where they would not fit).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Embeddings `[count, D]` (row-major) of the first `count` images of a packed set.
    pub fn embed(&self, images: &PackedImages, count: usize) -> Result<Vec<f32>> {
        let all: Vec<u32> = (0..count as u32).collect();
        self.embed_indices(images, &all)
    }

    /// Embeddings `[indices.len(), D]` of the images `indices` of a packed set, in that order.
    pub fn embed_indices(&self, images: &PackedImages, indices: &[u32]) -> Result<Vec<f32>> {
        self.embed_indices_reporting(images, indices, &mut |_| ())
    }

    /// [`embed_indices`](Self::embed_indices), telling `done` the number of images embedded
    /// after each chunk (for a progress bar).
    pub fn embed_indices_reporting(
        &self,
        images: &PackedImages,
        indices: &[u32],
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>> {
        // A set in host memory is staged a chunk at a time and gathered at slots 0..chunk.
        let mut stager = images.stager(self.gpu, self.chunk)?;
        let source = stager.as_ref().map_or(images, Stager::images);
        if let Some(s) = &stager {
            self.gpu.write_u32(&self.indices, &s.slots())?;
        }
        let gather =
            gather::gather_images(self.gpu, source, &self.indices, &self.input, self.norm)?;
        let mut out = Vec::with_capacity(indices.len() * self.dim);
        for chunk in indices.chunks(self.chunk) {
            // A short last chunk repeats its last image to fill the fixed batch; those rows
            // are dropped.
            let last = *chunk.last().expect("chunks are never empty");
            let idx: Vec<u32> = (0..self.chunk)
                .map(|i| chunk.get(i).copied().unwrap_or(last))
                .collect();
            match stager.as_mut() {
                Some(s) => s.stage(self.gpu, &idx)?,
                None => self.gpu.write_u32(&self.indices, &idx)?,
            }
            let mut rec = self.gpu.recorder();
            rec.record(&gather);
            for k in &self.forward {
                rec.record(k);
            }
            rec.submit();
            let e = self.gpu.read_f32(&self.output)?;
            out.extend_from_slice(&e[..chunk.len() * self.dim]);
            done(out.len() / self.dim);
        }
        Ok(out)
    }
}
