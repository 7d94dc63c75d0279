//! Prepared launches. A [`Dispatch`] is one pipeline + bind group + workgroup count; a
//! [`Kernel`] is the dispatches of one op (most have one; split reductions have two) plus
//! any scratch buffers they need. Both are built once and recorded as often as wanted.

use std::sync::Arc;

use super::Tensor;

/// Largest workgroup count per dimension that every adapter accepts (WebGPU's default limit).
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65_535;

/// Which implementation the matmul-shaped ops take where two exist: the storage-buffer
/// kernels, or the texel kernels that read operands packed into textures (several times
/// faster on lavapipe, where a texel fetch is vectorised and a storage load is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Per adapter, as `cargo bench` measured them: on CPU adapters (lavapipe) the texel
    /// kernels throughout; on GPUs the storage kernels, except convolution grad_weight,
    /// whose texel kernel was 2-3x faster on an NVIDIA H100.
    Auto,
    Storage,
    Texels,
}

/// The ops that have both kernels, for [`KernelPath::takes_texels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TexelOp {
    ConvForward,
    ConvGradInput,
    ConvGradWeight,
    Dense,
}

impl KernelPath {
    /// `auto`, `storage` or `texels`.
    pub fn parse(s: &str) -> Option<KernelPath> {
        match s {
            "auto" => Some(KernelPath::Auto),
            "storage" => Some(KernelPath::Storage),
            "texels" => Some(KernelPath::Texels),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Auto => "auto",
            KernelPath::Storage => "storage",
            KernelPath::Texels => "texels",
        }
    }

    /// Whether `op` takes its texel kernel on an adapter of `device_type` (wgpu's
    /// `DeviceType` as text: "Cpu", "DiscreteGpu", …).
    pub fn takes_texels(self, op: TexelOp, device_type: &str) -> bool {
        match self {
            KernelPath::Storage => false,
            KernelPath::Texels => true,
            KernelPath::Auto => device_type == "Cpu" || op == TexelOp::ConvGradWeight,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::{KernelPath, TexelOp};

    const OPS: [TexelOp; 4] = [
        TexelOp::ConvForward,
        TexelOp::ConvGradInput,
        TexelOp::ConvGradWeight,
        TexelOp::Dense,
    ];

    #[test]
    fn auto_takes_texels_throughout_on_cpus_and_for_conv_grad_weight_on_gpus() {
        for op in OPS {
            assert!(KernelPath::Auto.takes_texels(op, "Cpu"));
            assert_eq!(
                KernelPath::Auto.takes_texels(op, "DiscreteGpu"),
                op == TexelOp::ConvGradWeight
            );
            assert!(KernelPath::Texels.takes_texels(op, "DiscreteGpu"));
            assert!(!KernelPath::Storage.takes_texels(op, "Cpu"));
        }
        for name in ["auto", "storage", "texels"] {
            assert_eq!(KernelPath::parse(name).map(KernelPath::name), Some(name));
        }
        assert_eq!(KernelPath::parse("fast"), None);
    }
}
