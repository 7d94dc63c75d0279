//! Which kernel runs where: every rule that picks a kernel, or a variant of one, by the kind
//! of adapter and the shape of the op. The launchers of `ops` build what these rules name,
//! and the tape records what the launchers' plans return; nothing else decides.
//!
//! Two families have a storage-buffer kernel and a texel kernel that reads its operands
//! packed into textures (several times faster on lavapipe, where a texel fetch is
//! vectorised and a storage load is not): convolution and the matrix products (dense layers,
//! pairwise distances). [`Policy`] picks between them for one device from its
//! [`KernelPath`] (`SIAMESE_KERNELS`) and its [`AdapterKind`].

use crate::vocab::Conv2dGeometry;

// ---- Adapters ----

/// wgpu's device types, as far as a rule here tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    /// A software rasteriser on the host's cores (lavapipe / llvmpipe).
    Cpu,
    /// Everything else: discrete, integrated and virtual GPUs, and adapters wgpu does not
    /// classify (every rule measured so far separates only the CPU adapters).
    Gpu,
}

impl AdapterKind {
    pub(crate) fn of(device_type: wgpu::DeviceType) -> AdapterKind {
        match device_type {
            wgpu::DeviceType::Cpu => AdapterKind::Cpu,
            _ => AdapterKind::Gpu,
        }
    }

    /// Whether a profile of a training step must time its dispatches from the host rather
    /// than with timestamp queries: lavapipe's timestamps do not bracket dispatches that
    /// read textures (their time lands in one pass), so CPU adapters are timed from the host.
    pub fn host_timed_profile(self) -> bool {
        self == AdapterKind::Cpu
    }

    /// About how many invocations the texel grad_weight splits its reduction to keep busy.
    /// A CPU adapter runs a few invocations per core at a time; more splits there only
    /// lengthen the reduce pass.
    pub fn conv_grad_weight_tex_invocations(self) -> usize {
        match self {
            AdapterKind::Cpu => 1024,
            AdapterKind::Gpu => 16_384,
        }
    }
}

// ---- Storage or texels ----

/// Which implementation the ops with two take: the storage-buffer kernels, the texel
/// kernels, or each op's measured best for the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Per adapter, as `cargo bench` measured them: on CPU adapters (lavapipe) the texel
    /// kernels throughout; on GPUs the storage kernels, except convolution grad_weight,
    /// whose texel kernel was 2-3x faster on an NVIDIA H100.
    Auto,
    Storage,
    Texels,
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
}

/// The ops that have both kernels, for [`Policy::takes_texels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TexelOp {
    ConvForward,
    ConvGradInput,
    ConvGradWeight,
    Dense,
    /// The distance matrix between query and reference rows (retrieval's search).
    PairwiseDistance,
}

/// Where a matmul-shaped kernel reads its operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operands {
    Storage,
    Texels,
}

impl Operands {
    fn texels_if(texels: bool) -> Operands {
        if texels {
            Operands::Texels
        } else {
            Operands::Storage
        }
    }
}

/// The forward kernel of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvForward {
    Storage,
    /// x packed channels-by-fours (horizontal taps unfolded as channels for layers of 1-3
    /// channels); its texels serve grad_weight too.
    Texels,
    /// Single-channel x packed four images to a texel's lanes.
    ImagesInLanes,
}

/// The kernels of one convolution. grad_bias has no choice of its own: the texel
/// grad_weight sums it from the dy it fetches, else the storage kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dKernels {
    pub forward: ConvForward,
    pub grad_input: Operands,
    pub grad_weight: Operands,
}

impl Conv2dKernels {
    /// The storage kernels throughout (they cover every geometry).
    pub const STORAGE: Conv2dKernels = Conv2dKernels {
        forward: ConvForward::Storage,
        grad_input: Operands::Storage,
        grad_weight: Operands::Storage,
    };
}

/// The kernel rules of one device: its kernel path and the kind of its adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    path: KernelPath,
    adapter: AdapterKind,
}

impl Policy {
    pub fn new(path: KernelPath, adapter: AdapterKind) -> Policy {
        Policy { path, adapter }
    }

    /// Whether `op` takes its texel kernel where the kernel covers the shape.
    pub fn takes_texels(self, op: TexelOp) -> bool {
        match self.path {
            KernelPath::Storage => false,
            KernelPath::Texels => true,
            KernelPath::Auto => self.adapter == AdapterKind::Cpu || op == TexelOp::ConvGradWeight,
        }
    }

    /// A dense layer's three products (its bias gradient has one kernel).
    pub fn dense(self) -> Operands {
        Operands::texels_if(self.takes_texels(TexelOp::Dense))
    }

    /// The distance matrix of a retrieval search: matmul-shaped, so it takes the texel
    /// kernel where the dense layer does.
    pub fn pairwise_distance(self) -> Operands {
        Operands::texels_if(self.takes_texels(TexelOp::PairwiseDistance))
    }

    /// Each product of a convolution of geometry `g` on its texel kernel where the path
    /// says so and the texel kernels cover `g`; a single-channel forward on texels puts four
    /// images in a texel's lanes.
    pub fn conv2d(self, g: &Conv2dGeometry) -> Conv2dKernels {
        let fits = g.texel_path_fits();
        let tex = |op| fits && self.takes_texels(op);
        let forward = if !tex(TexelOp::ConvForward) {
            ConvForward::Storage
        } else if g.images_in_lanes() {
            ConvForward::ImagesInLanes
        } else {
            ConvForward::Texels
        };
        Conv2dKernels {
            forward,
            grad_input: Operands::texels_if(tex(TexelOp::ConvGradInput)),
            grad_weight: Operands::texels_if(tex(TexelOp::ConvGradWeight)),
        }
    }
}

// ---- Convolution shapes ----

impl Conv2dGeometry {
    /// Whether the texel kernels cover this convolution: any stride, a square kernel and a
    /// padding under it, which takes every convolution of a ResNet (3×3 with padding 1 at
    /// stride 1 and 2, the 7×7 stem with padding 3 at stride 2, the 1×1 projections at stride
    /// 2). The rest stays on the storage kernels: grad_input on texels reads dy with one
    /// border, ⌈(KH − 1 − pad)/stride⌉, for both axes (a kernel of another width would need
    /// another), and a padding of KH or more would make that border negative (the
    /// transposed convolution would crop dy).
    pub fn texel_path_fits(&self) -> bool {
        self.kh == self.kw && self.pad < self.kh
    }

    /// Whether the texel forward puts four images in a texel's lanes: single-channel
    /// layers, which unfolded would fill KW of ⌈KW/4⌉·4 lanes (5 of 8 for the reference
    /// network's first layer).
    pub fn images_in_lanes(&self) -> bool {
        self.c == 1
    }

    /// How many horizontal taps the texel kernels pack as channels: KW for layers of 1–3
    /// channels (which would fill a quarter to three quarters of each texel), else 1.
    pub fn unfold(&self) -> usize {
        if self.c < 4 { self.kw } else { 1 }
    }
}

/// Whether the texel forward over operands packed with `unfold` unrolls its loop over
/// positions: without unfolding it does; unfolded input loops over its positions, as
/// measured faster there (see the shader).
pub(crate) fn conv_unrolls_positions(unfold: usize) -> bool {
    unfold == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [TexelOp; 5] = [
        TexelOp::ConvForward,
        TexelOp::ConvGradInput,
        TexelOp::ConvGradWeight,
        TexelOp::Dense,
        TexelOp::PairwiseDistance,
    ];

    #[test]
    fn auto_takes_texels_throughout_on_cpus_and_for_conv_grad_weight_on_gpus() {
        let on = |path, adapter| Policy::new(path, adapter);
        for op in OPS {
            assert!(on(KernelPath::Auto, AdapterKind::Cpu).takes_texels(op));
            assert_eq!(
                on(KernelPath::Auto, AdapterKind::Gpu).takes_texels(op),
                op == TexelOp::ConvGradWeight
            );
            assert!(on(KernelPath::Texels, AdapterKind::Gpu).takes_texels(op));
            assert!(!on(KernelPath::Storage, AdapterKind::Cpu).takes_texels(op));
        }
        for name in ["auto", "storage", "texels"] {
            assert_eq!(KernelPath::parse(name).map(KernelPath::name), Some(name));
        }
        assert_eq!(KernelPath::parse("fast"), None);
        assert_eq!(AdapterKind::of(wgpu::DeviceType::Cpu), AdapterKind::Cpu);
        assert_eq!(AdapterKind::of(wgpu::DeviceType::Other), AdapterKind::Gpu);
    }

    #[test]
    fn convolutions_take_texels_only_where_the_texel_kernels_cover_them() {
        let g = |c, k, stride, pad| Conv2dGeometry {
            n: 2,
            c,
            h: 12,
            w: 12,
            o: 8,
            kh: k,
            kw: k,
            stride,
            pad,
        };
        let texels = Policy::new(KernelPath::Texels, AdapterKind::Gpu);
        let all = |forward| Conv2dKernels {
            forward,
            grad_input: Operands::Texels,
            grad_weight: Operands::Texels,
        };
        // A ResNet's convolutions: 3×3 with padding 1 at strides 1 and 2, the 1×1
        // projections at stride 2 (and 1), the 7×7 stem with padding 3 at stride 2 (on RGB,
        // unfolded; on one channel, four images in the lanes); and a stride past the kernel.
        for covered in [
            g(8, 3, 1, 1),
            g(8, 3, 2, 1),
            g(8, 1, 2, 0),
            g(8, 1, 1, 0),
            g(3, 7, 2, 3),
            g(8, 2, 3, 1),
        ] {
            assert!(covered.texel_path_fits(), "{covered:?}");
            assert_eq!(texels.conv2d(&covered), all(ConvForward::Texels));
        }
        for single_channel in [g(1, 5, 1, 0), g(1, 7, 2, 3)] {
            assert_eq!(
                texels.conv2d(&single_channel),
                all(ConvForward::ImagesInLanes)
            );
        }
        let non_square = Conv2dGeometry {
            kw: 2,
            ..g(8, 3, 1, 1)
        };
        for uncovered in [non_square, g(8, 3, 1, 3), g(8, 3, 2, 4)] {
            assert!(!uncovered.texel_path_fits(), "{uncovered:?}");
            assert_eq!(texels.conv2d(&uncovered), Conv2dKernels::STORAGE);
        }
        // On lavapipe the default policy takes the texel kernels for a strided layer too.
        let cpu = Policy::new(KernelPath::Auto, AdapterKind::Cpu);
        assert_eq!(cpu.conv2d(&g(8, 3, 2, 1)), all(ConvForward::Texels));
        let gpu = Policy::new(KernelPath::Auto, AdapterKind::Gpu);
        assert_eq!(
            gpu.conv2d(&g(8, 3, 1, 1)),
            Conv2dKernels {
                grad_weight: Operands::Texels,
                ..Conv2dKernels::STORAGE
            }
        );
        assert_eq!(gpu.dense(), Operands::Storage);
        assert_eq!(gpu.pairwise_distance(), Operands::Storage);
    }
}
