//! Prepared launches. A [`Dispatch`] is one pipeline + bind group + workgroup count; a
//! [`Kernel`] is the dispatches of one op (most have one; split reductions have two) plus
//! any scratch buffers they need. Both are built once and recorded as often as wanted.

use std::sync::Arc;

use super::Tensor;

/// Largest workgroup count per dimension that every adapter accepts (WebGPU's default limit).
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65_535;

/// Parameters passed to a shader as its `@binding(0)` uniform.
pub trait Uniform: bytemuck::Pod {}
impl<T: bytemuck::Pod> Uniform for T {}

/// One compute dispatch, ready to record. Cloning shares the GPU objects.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub(crate) entry: &'static str,
    pub(crate) pipeline: Arc<wgpu::ComputePipeline>,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) uniform: wgpu::Buffer,
    pub(crate) workgroups: [u32; 3],
}

impl Dispatch {
    /// The WGSL entry point this dispatch runs.
    pub fn entry(&self) -> &'static str {
        self.entry
    }

    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }
}

/// The dispatches of one op, in order, and the scratch tensors they share. Cloning shares
/// the GPU objects (reference counts), so a kernel can sit in several recorded programs.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub(crate) dispatches: Vec<Dispatch>,
    pub(crate) _scratch: Vec<Tensor>,
}

impl Kernel {
    pub fn single(dispatch: Dispatch) -> Kernel {
        Kernel {
            dispatches: vec![dispatch],
            _scratch: Vec::new(),
        }
    }

    pub fn with_scratch(dispatches: Vec<Dispatch>, scratch: Vec<Tensor>) -> Kernel {
        Kernel {
            dispatches,
            _scratch: scratch,
        }
    }

    /// The dispatches of `kernels`, in order, as one kernel (e.g. packing, then a product).
    pub fn chain(kernels: impl IntoIterator<Item = Kernel>) -> Kernel {
        let mut all = Kernel::with_scratch(Vec::new(), Vec::new());
        for k in kernels {
            all.dispatches.extend(k.dispatches);
            all._scratch.extend(k._scratch);
        }
        all
    }

    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// The entry point of the first dispatch: what the kernel is, in profiles and labels.
    pub fn label(&self) -> &'static str {
        self.dispatches.first().map_or("empty", |d| d.entry)
    }

    /// Rewrites the uniform parameters of every dispatch (e.g. an optimizer's learning rate
    /// and step count), queued before the next submission: no allocation, no new bind group.
    /// `params` must be the struct type the kernel was built with.
    pub fn set_params<P: Uniform>(&self, gpu: &super::Gpu, params: &P) {
        for d in &self.dispatches {
            assert!(
                std::mem::size_of::<P>() as u64 <= d.uniform.size(),
                "set_params on {}: parameter struct larger than the kernel's",
                d.entry
            );
            gpu.queue()
                .write_buffer(&d.uniform, 0, bytemuck::bytes_of(params));
        }
    }
}

/// Workgroup counts covering `groups` workgroups, folded into two dimensions when one would
/// exceed the per-dimension limit. Shaders recover the linear workgroup index as
/// `wid.x + wid.y * nwg.x` and must bounds-check, since the fold can overshoot.
pub fn grid_1d(groups: u32) -> [u32; 3] {
    let groups = groups.max(1);
    if groups <= MAX_WORKGROUPS_PER_DIM {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(MAX_WORKGROUPS_PER_DIM);
        [groups.div_ceil(y), y, 1]
    }
}
