//! Recording kernels into one command encoder, submitted once.

use super::{Gpu, Kernel, Tensor};

/// Collects kernels, clears and copies into one command buffer; [`Recorder::submit`] sends it.
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    encoder: wgpu::CommandEncoder,
}

impl<'g> Recorder<'g> {
    pub(crate) fn new(gpu: &'g Gpu) -> Self {
        let encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        Recorder { gpu, encoder }
    }

    /// Records every dispatch of `kernel` in one compute pass. wgpu orders the dispatches of
    /// a pass (each sees the previous one's writes), so no extra barrier is needed.
    pub fn record(&mut self, kernel: &Kernel) {
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for d in &kernel.dispatches {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Zeroes a tensor (e.g. gradients before accumulation).
    pub fn clear(&mut self, tensor: &Tensor) {
        self.encoder
            .clear_buffer(&tensor.buffer, tensor.offset, Some(tensor.byte_size()));
    }

    /// Copies `src` into `dst` (same byte size).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) {
        assert_eq!(
            src.byte_size(),
            dst.byte_size(),
            "copy between tensors of different sizes"
        );
        self.encoder.copy_buffer_to_buffer(
            &src.buffer,
            src.offset,
            &dst.buffer,
            dst.offset,
            src.byte_size(),
        );
    }

    /// Submits everything recorded as one command buffer.
    pub fn submit(self) -> wgpu::SubmissionIndex {
        self.gpu.queue().submit([self.encoder.finish()])
    }
}
