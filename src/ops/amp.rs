//! Launchers for `shaders/amp.wgsl`: casts between f32 and f16 tensors, and the dynamic loss
//! scale of mixed-precision training ([`LossScaler`]), with torch.cuda.amp.GradScaler's
//! defaults and rules.

use bytemuck::{Pod, Zeroable};

use super::{expect, float_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, grid_1d};
use crate::vocab::Precision;

/// Always the f16 variant: every entry either casts to or from f16, or serves a run that does.
pub const SHADER: Shader =
    Shader::new("amp", include_str!("../../shaders/amp.wgsl")).with_f16(F16Variant {
        aliases: &["half"],
        texels: false,
    });

impl Precision {
    /// The element type of the tower's activations.
    pub fn activations(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Mixed => DType::F16,
        }
    }
}

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AmpParams {
    len: u32,
    growth: f32,
    backoff: f32,
    interval: u32,
}

/// Elements of the scaler's state buffer (see the shader's header).
const STATE_LEN: usize = 6;

/// `dst = src` between an f32 and an f16 tensor of one shape (f32 → f16 rounds to nearest
/// even, f16 → f32 is exact).
pub fn cast(gpu: &Gpu, src: &Tensor, dst: &Tensor) -> Result<Kernel> {
    const OP: &str = "cast";
    let from = float_dtype(OP, "src", src)?;
    let (entry, to, bindings) = match from {
        DType::F32 => ("cast_to_f16", DType::F16, [(1, src), (2, dst)]),
        _ => ("cast_to_f32", DType::F32, [(3, src), (4, dst)]),
    };
    expect(OP, "dst", dst, src.shape(), to)?;
    let len = to_u32(OP, "the element count", src.len())?;
    let params = AmpParams {
        len,
        growth: 0.0,
        backoff: 0.0,
        interval: 0,
    };
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        entry,
        &[],
        &params,
        &bindings,
        grid_1d(len.div_ceil(WG)),
    )?))
}

/// How the loss scale moves: PyTorch's GradScaler defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaleConfig {
    /// The first step's scale (2^16).
    pub init: f32,
    /// Factor after `interval` steps in a row without overflow (2).
    pub growth: f32,
    /// Factor after a step whose gradients overflowed (0.5); that step is skipped.
    pub backoff: f32,
    pub interval: u32,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        LossScaleConfig {
            init: 65536.0,
            growth: 2.0,
            backoff: 0.5,
            interval: 2000,
        }
    }
}

/// The scaler's state as the host reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleState {
    /// The scale the next step uses.
    pub scale: f32,
    /// Steps whose update was applied, and steps skipped for overflow.
    pub applied: u32,
    pub skipped: u32,
    /// The scale the last step's gradients carry, and whether that step was skipped.
    pub last_scale: f32,
    pub last_skipped: bool,
}

/// A dynamic loss scale on the device. The backward is seeded with the scale (so every
/// gradient holds scale·g); [`check`](Self::check) flags a step whose gradients overflowed;
/// the optimizer's `_amp` entries skip such a step or unscale; [`update`](Self::update) then
/// moves the scale and writes it into the next backward's seed.
#[derive(Debug)]
pub struct LossScaler {
    config: LossScaleConfig,
    state: Tensor,
    found_inf: Tensor,
    seed: Tensor,
    check: Kernel,
    update: Kernel,
}

impl LossScaler {
    /// A scaler for the flat f32 gradients `grads`, seeding backward through `seed` (the
    /// loss's gradient, `[1]` f32), which it sets to the first scale now.
    pub fn new(gpu: &Gpu, config: LossScaleConfig, grads: &Tensor, seed: &Tensor) -> Result<Self> {
        const OP: &str = "loss_scale";
        let ok = |v: f32| v.is_finite() && v > 0.0;
        if !(ok(config.init) && config.growth >= 1.0 && ok(config.backoff) && config.backoff < 1.0)
            || config.interval == 0
        {
            return Err(Error::Shape {
                op: OP,
                detail: format!(
                    "the loss scale needs init > 0, growth ≥ 1, backoff in (0, 1), interval ≥ 1; got {config:?}"
                ),
            });
        }
        expect(OP, "grads", grads, grads.shape(), DType::F32)?;
        expect(OP, "seed", seed, &[1], DType::F32)?;
        let len = to_u32(OP, "the gradient count", grads.len())?;
        let params = AmpParams {
            len,
            growth: config.growth,
            backoff: config.backoff,
            interval: config.interval,
        };
        let state = gpu.zeros(&[STATE_LEN], DType::F32)?;
        let found_inf = gpu.zeros(&[1], DType::U32)?;
        let check = Kernel::single(gpu.dispatch(
            &SHADER,
            "amp_check_finite",
            &[],
            &params,
            &[(1, grads), (5, &found_inf)],
            grid_1d(len.div_ceil(WG)),
        )?);
        let update = Kernel::single(gpu.dispatch(
            &SHADER,
            "amp_update_scale",
            &[],
            &params,
            &[(4, seed), (5, &found_inf), (6, &state)],
            [1, 1, 1],
        )?);
        let scaler = LossScaler {
            config,
            state,
            found_inf,
            seed: seed.clone(),
            check,
            update,
        };
        scaler.restore(gpu, &scaler.initial_state())?;
        Ok(scaler)
    }

    pub fn config(&self) -> &LossScaleConfig {
        &self.config
    }

    /// Flags overflowed gradients: record after the backward, before the optimizer.
    pub fn check(&self) -> &Kernel {
        &self.check
    }

    /// Moves the scale and reseeds the backward: record after the optimizer.
    pub fn update(&self) -> &Kernel {
        &self.update
    }

    /// The `[6]` f32 state buffer (see `shaders/amp.wgsl`), for checkpoints.
    pub fn state(&self) -> &Tensor {
        &self.state
    }

    /// The overflow flag (u32 `[1]`) the optimizer's `_amp` entries read.
    pub fn found_inf(&self) -> &Tensor {
        &self.found_inf
    }

    fn initial_state(&self) -> Vec<f32> {
        let s = self.config.init;
        vec![s, 0.0, 0.0, 0.0, s, 0.0]
    }

    /// Reads the state (waits for the submitted steps).
    pub fn read(&self, gpu: &Gpu) -> Result<ScaleState> {
        Ok(ScaleState::from_slice(&gpu.read_f32(&self.state)?))
    }

    /// Sets the state from a checkpoint (as [`state`](Self::state) read it), and the seed.
    pub fn restore(&self, gpu: &Gpu, values: &[f32]) -> Result<()> {
        if values.len() != STATE_LEN || !(values[0].is_finite() && values[0] > 0.0) {
            return Err(Error::Config(format!(
                "a saved loss-scale state is {STATE_LEN} values starting with a scale > 0, got {values:?}"
            )));
        }
        gpu.write_f32(&self.state, values)?;
        gpu.write_u32(&self.found_inf, &[0])?;
        gpu.write_f32(&self.seed, &values[..1])
    }
}

impl ScaleState {
    pub fn from_slice(v: &[f32]) -> ScaleState {
        ScaleState {
            scale: v[0],
            applied: v[2] as u32,
            skipped: v[3] as u32,
            last_scale: v[4],
            last_skipped: v[5] != 0.0,
        }
    }
}
