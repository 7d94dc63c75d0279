//! The flat parameter layout: every parameter is a view into one buffer (and its gradient a
//! view into another), so zeroing is one clear and the optimizer is one dispatch. Offsets are
//! aligned to 256 bytes, the largest storage-binding offset alignment WebGPU allows, in f16
//! as well as f32: mixed precision views its f16 copy of the weights at the same offsets.

use crate::gpu::Tensor;

/// f16 elements per 256 bytes (512 bytes of f32).
pub const ALIGN_ELEMS: usize = 128;

/// One named parameter tensor in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// PyTorch-style name, e.g. `tower.0.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset in elements (a multiple of [`ALIGN_ELEMS`]).
    pub offset: usize,
    /// Fan-in, for Kaiming-uniform initialisation.
    pub fan_in: usize,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parameters laid out one after another in a flat buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamLayout {
    pub params: Vec<ParamInfo>,
    /// Elements of the flat buffer, padding included.
    pub len: usize,
}

impl ParamLayout {
    /// Appends a parameter; returns its index.
    pub fn push(&mut self, name: String, shape: &[usize], fan_in: usize) -> usize {
        let offset = self.len.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
        let info = ParamInfo {
            name,
            shape: shape.to_vec(),
            offset,
            fan_in,
        };
        self.len = offset + info.len();
        self.params.push(info);
        self.params.len() - 1
    }

    /// The view of parameter `index` in `flat` (the values or the gradients).
    pub fn view(&self, flat: &Tensor, index: usize) -> Tensor {
        let p = &self.params[index];
        flat.view(p.offset, &p.shape)
            .expect("a parameter view lies inside its flat buffer")
    }

    /// Kaiming-uniform initial values as PyTorch's `Conv2d` and `Linear` draw them: weights
    /// and biases uniform in ±1/√fan_in (`kaiming_uniform_(a=√5)` gives exactly that bound).
    /// Padding stays zero.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut flat = vec![0.0f32; self.len];
        for p in &self.params {
            let bound = 1.0 / (p.fan_in as f32).sqrt();
            for v in &mut flat[p.offset..p.offset + p.len()] {
                *v = rng.random_range(-bound..bound);
            }
        }
        flat
    }
}
