//! Recording kernels into one command encoder, submitted once.

use super::{Dispatch, Gpu, Kernel, Profiler, Tensor};

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
        self.record_pass(kernel, None);
    }

    /// [`record`](Self::record), each dispatch in a pass of its own whose begin and end
    /// timestamps are written for `profiler` (silently unprofiled once the profiler is full).
    pub fn record_timed(&mut self, kernel: &Kernel, profiler: &mut Profiler) {
        for d in &kernel.dispatches {
            let slot = profiler.next_slot(d.entry);
            self.record_dispatches(
                d.entry,
                std::slice::from_ref(d),
                slot.map(|i| (&profiler.query_set, i)),
            );
        }
    }

    /// Resolves the profiler's timestamps at the end of this command buffer.
    pub fn resolve(&mut self, profiler: &Profiler) {
        profiler.resolve_into(&mut self.encoder);
    }

    fn record_pass(&mut self, kernel: &Kernel, timestamps: Option<(&wgpu::QuerySet, u32)>) {
        self.record_dispatches(kernel.label(), &kernel.dispatches, timestamps);
    }

    fn record_dispatches(
        &mut self,
        label: &str,
        dispatches: &[Dispatch],
        timestamps: Option<(&wgpu::QuerySet, u32)>,
    ) {
        let timestamp_writes = timestamps.map(|(query_set, i)| wgpu::ComputePassTimestampWrites {
            query_set,
            beginning_of_pass_write_index: Some(i),
            end_of_pass_write_index: Some(i + 1),
        });
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes,
            });
        for d in dispatches {
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
