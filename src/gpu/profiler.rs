//! Per-kernel GPU time from timestamp queries, where the adapter offers them
//! (`TIMESTAMP_QUERY`): each profiled kernel's compute pass writes a timestamp as it begins
//! and as it ends, so the figures are device time, free of host overhead.

use std::sync::Arc;

use super::{DType, Gpu, Tensor};
use crate::error::Result;

/// Timestamps for up to `capacity` kernels of one submission.
pub struct Profiler {
    pub(crate) query_set: wgpu::QuerySet,
    resolve: Tensor,
    capacity: u32,
    pub(crate) labels: Vec<&'static str>,
}

impl Profiler {
    /// A profiler for up to `capacity` kernels, or None when the adapter has no timestamps.
    pub fn new(gpu: &Gpu, capacity: u32) -> Option<Profiler> {
        if !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let query_set = gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profiler"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * capacity,
        });
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("profiler resolve"),
            size: 16 * capacity as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        // Each u64 timestamp is read back as two u32 words.
        let resolve = Tensor::new(Arc::new(buffer), 0, &[4 * capacity as usize], DType::U32);
        Some(Profiler {
            query_set,
            resolve,
            capacity,
            labels: Vec::new(),
        })
    }

    /// The query indices of the next kernel, if there is room.
    pub(crate) fn next_slot(&mut self, label: &'static str) -> Option<u32> {
        let index = self.labels.len() as u32;
        (index < self.capacity).then(|| {
            self.labels.push(label);
            2 * index
        })
    }

    pub(crate) fn resolve_into(&self, encoder: &mut wgpu::CommandEncoder) {
        let count = 2 * self.labels.len() as u32;
        if count > 0 {
            encoder.resolve_query_set(&self.query_set, 0..count, &self.resolve.buffer, 0);
        }
    }

    /// (entry point of the kernel's first dispatch, milliseconds) for every profiled kernel,
    /// after the submission that recorded them; then the profiler is empty again.
    pub fn read(&mut self, gpu: &Gpu) -> Result<Vec<(&'static str, f64)>> {
        let words = gpu.read_u32(&self.resolve)?;
        let ns_per_tick = gpu.queue().get_timestamp_period() as f64;
        let stamp = |i: usize| words[2 * i] as u64 | (words[2 * i + 1] as u64) << 32;
        let times = self
            .labels
            .iter()
            .enumerate()
            .map(|(k, &label)| {
                (
                    label,
                    stamp(2 * k + 1).saturating_sub(stamp(2 * k)) as f64 * ns_per_tick / 1e6,
                )
            })
            .collect();
        self.labels.clear();
        Ok(times)
    }
}
