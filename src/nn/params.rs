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
    /// How its initial values are drawn.
    pub init: Init,
    /// Frozen: no gradient, no optimizer state (fine-tuning the rest).
    pub frozen: bool,
}

/// The initial values of a tensor, as PyTorch's modules draw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Uniform in ±1/√fan_in: `Conv2d` and `Linear` weights and biases
    /// (`kaiming_uniform_(a=√5)` gives exactly that bound).
    Uniform { fan_in: usize },
    /// All zeros (BatchNorm's bias and running mean).
    Zeros,
    /// All ones (BatchNorm's weight and running variance).
    Ones,
    /// Standard normal (`torch.nn.init.normal_`: pytorch-metric-learning's class weights).
    Normal,
    /// Normal with std √(2/fan_out) (`kaiming_normal_(mode="fan_out")`: its proxies).
    KaimingNormalFanOut { fan_out: usize },
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parameters laid out one after another in a flat buffer: the frozen ones first, then the
/// trainable ones from [`trainable_offset`](Self::trainable_offset) to the end, so that the
/// optimizer and its state cover one contiguous view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamLayout {
    /// In the order they were pushed (the order of the initial draws).
    pub params: Vec<ParamInfo>,
    /// Elements of the flat buffer, padding included.
    pub len: usize,
    /// Where the trainable parameters start (0 when nothing is frozen).
    pub trainable_offset: usize,
}

impl ParamLayout {
    /// Appends a parameter; returns its index.
    pub fn push(&mut self, name: String, shape: &[usize], init: Init) -> usize {
        let offset = self.len.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
        let info = ParamInfo {
            name,
            shape: shape.to_vec(),
            offset,
            init,
            frozen: false,
        };
        self.len = offset + info.len();
        self.params.push(info);
        self.params.len() - 1
    }

    /// Freezes the parameters whose names `frozen` accepts and lays the buffer out again:
    /// frozen ones first, then the rest, each group in push order. With nothing frozen the
    /// layout is unchanged.
    pub fn freeze(&mut self, frozen: impl Fn(&str) -> bool) {
        for p in &mut self.params {
            p.frozen = frozen(&p.name);
        }
        let mut end: usize = 0;
        for group_frozen in [true, false] {
            if !group_frozen {
                self.trainable_offset = end.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
            }
            for p in self.params.iter_mut().filter(|p| p.frozen == group_frozen) {
                p.offset = end.div_ceil(ALIGN_ELEMS) * ALIGN_ELEMS;
                end = p.offset + p.len();
            }
        }
        self.len = end.max(self.trainable_offset);
    }

    /// The view of the trainable parameters in `flat` (the values or the gradients): what
    /// the optimizer updates.
    pub fn trainable(&self, flat: &Tensor) -> Tensor {
        flat.view(self.trainable_offset, &[self.len - self.trainable_offset])
            .expect("the trainable span lies inside its flat buffer")
    }

    /// The trainable span of `flat` cut at offset `at` into (before, from `at` on): two
    /// optimizers with their own learning rates; None unless `at` lies strictly inside it.
    pub fn split_trainable(&self, flat: &Tensor, at: usize) -> Option<(Tensor, Tensor)> {
        if at <= self.trainable_offset || at >= self.len {
            return None;
        }
        let view = |from: usize, to: usize| {
            flat.view(from, &[to - from])
                .expect("a trainable span lies inside its flat buffer")
        };
        Some((view(self.trainable_offset, at), view(at, self.len)))
    }

    /// The view of parameter `index` in `flat` (the values or the gradients).
    pub fn view(&self, flat: &Tensor, index: usize) -> Tensor {
        let p = &self.params[index];
        flat.view(p.offset, &p.shape)
            .expect("a parameter view lies inside its flat buffer")
    }

    /// Initial values, each tensor as its [`Init`] says, the uniform draws from one seeded
    /// stream in layout order. Padding stays zero.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut flat = vec![0.0f32; self.len];
        for p in &self.params {
            let values = &mut flat[p.offset..p.offset + p.len()];
            match p.init {
                Init::Uniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    values
                        .iter_mut()
                        .for_each(|v| *v = rng.random_range(-bound..bound));
                }
                Init::Normal => values
                    .iter_mut()
                    .for_each(|v| *v = standard_normal(&mut rng)),
                Init::KaimingNormalFanOut { fan_out } => {
                    let std = (2.0 / fan_out as f32).sqrt();
                    values
                        .iter_mut()
                        .for_each(|v| *v = std * standard_normal(&mut rng));
                }
                Init::Zeros => values.fill(0.0),
                Init::Ones => values.fill(1.0),
            }
        }
        flat
    }

    /// The index of the tensor called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }
}

/// A standard normal draw (Box–Muller on two uniform draws).
fn standard_normal(rng: &mut impl rand::Rng) -> f32 {
    use rand::RngExt;
    let u1: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]: the logarithm stays finite
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}
