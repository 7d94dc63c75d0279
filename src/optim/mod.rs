//! Optimizers over the flat parameter buffer, and learning-rate schedules.
//!
//! One optimizer step is one dispatch (`ops::optim`); what changes between steps (the
//! learning rate from the schedule, Adam's step count) is rewritten in the kernel's uniform
//! before the step's submission, so nothing is rebuilt or allocated per step.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Tensor};
use crate::ops::amp::LossScaler;
use crate::ops::optim::{self, Adam, AdamStep, Sgd, SgdStep};

/// Which update rule, with its own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    Sgd { momentum: f32, nesterov: bool },
    Adam { beta1: f32, beta2: f32, eps: f32 },
    AdamW { beta1: f32, beta2: f32, eps: f32 },
}

impl OptimizerKind {
    /// The rule named `name` with PyTorch's default settings (SGD: momentum 0.9).
    pub fn named(name: &str) -> Result<Self> {
        match name.to_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            }),
            "nesterov" => Ok(OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            }),
            "adam" => Ok(OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            }),
            "adamw" => Ok(OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            }),
            _ => Err(Error::Config(format!(
                "unknown optimizer `{name}`: use sgd, nesterov, adam or adamw"
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd {
                nesterov: false, ..
            } => "sgd",
            OptimizerKind::Sgd { nesterov: true, .. } => "nesterov",
            OptimizerKind::Adam { .. } => "adam",
            OptimizerKind::AdamW { .. } => "adamw",
        }
    }
}

/// Learning rate as a function of the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step {
        every: u32,
        gamma: f32,
    },
    /// Linear warm-up over `warmup` steps, then cosine decay to 0 at the last step.
    Cosine {
        warmup: u32,
    },
}

impl Schedule {
    /// The learning rate of step `step` (from 0) of `total` steps, for base rate `base`.
    pub fn lr(&self, base: f32, step: u32, total: u32) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((step / every.max(1)) as i32),
            Schedule::Cosine { warmup } => {
                if step < warmup {
                    return base * (step + 1) as f32 / warmup as f32;
                }
                let span = total.saturating_sub(warmup).max(1) as f32;
                let progress = ((step - warmup) as f32 / span).min(1.0);
                base * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos())
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = Error;

    /// `constant`, `step:EVERY:GAMMA` (e.g. `step:100:0.5`), `cosine` or `cosine:WARMUP`.
    fn from_str(s: &str) -> Result<Schedule> {
        let bad = || {
            Error::Config(format!(
                "unknown schedule `{s}`: use constant, step:EVERY:GAMMA or cosine[:WARMUP]"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["step", every, gamma] => {
                let every: u32 = every.parse().map_err(|_| bad())?;
                let gamma: f32 = gamma.parse().map_err(|_| bad())?;
                if every == 0 || gamma.is_nan() || gamma <= 0.0 {
                    return Err(bad());
                }
                Ok(Schedule::Step { every, gamma })
            }
            ["cosine"] => Ok(Schedule::Cosine { warmup: 0 }),
            ["cosine", warmup] => Ok(Schedule::Cosine {
                warmup: warmup.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Step { every, gamma } => write!(f, "step:{every}:{gamma}"),
            Schedule::Cosine { warmup } => write!(f, "cosine:{warmup}"),
        }
    }
}

/// Everything that defines an optimizer run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
}

enum Rule {
    Sgd(SgdStep),
    Adam(AdamStep),
}

/// A built optimizer: its kernel over the flat buffers, its state buffers, its schedule.
pub struct Optimizer {
    config: OptimizerConfig,
    rule: Rule,
    total_steps: u32,
    /// Steps taken (the next step is `taken`, from 0).
    taken: u32,
    /// Momentum (SGD) or first and second moments (Adam), flat like the parameters.
    state: Vec<Tensor>,
}

impl Optimizer {
    /// Builds the update of `params` from `grads` (flat buffers of equal length) for a run of
    /// `total_steps` steps (the cosine schedule needs the end); under mixed precision the
    /// gradients carry the loss `scale`, which the update removes.
    pub fn new(
        gpu: &Gpu,
        config: OptimizerConfig,
        params: &Tensor,
        grads: &Tensor,
        total_steps: u32,
        scale: Option<&LossScaler>,
    ) -> Result<Self> {
        let state = |gpu: &Gpu| gpu.zeros(params.shape(), DType::F32);
        let (rule, state) = match config.kind {
            OptimizerKind::Sgd { momentum, nesterov } => {
                let velocity = state(gpu)?;
                let cfg = Sgd {
                    lr: config.lr,
                    momentum,
                    weight_decay: config.weight_decay,
                    nesterov,
                };
                (
                    Rule::Sgd(optim::sgd(gpu, &cfg, params, grads, &velocity, scale)?),
                    vec![velocity],
                )
            }
            OptimizerKind::Adam { beta1, beta2, eps }
            | OptimizerKind::AdamW { beta1, beta2, eps } => {
                let (m, v) = (state(gpu)?, state(gpu)?);
                let cfg = Adam {
                    lr: config.lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay: config.weight_decay,
                };
                let step = if matches!(config.kind, OptimizerKind::Adam { .. }) {
                    optim::adam(gpu, &cfg, params, grads, &m, &v, scale)?
                } else {
                    optim::adamw(gpu, &cfg, params, grads, &m, &v, scale)?
                };
                (Rule::Adam(step), vec![m, v])
            }
        };
        Ok(Optimizer {
            config,
            rule,
            total_steps,
            taken: 0,
            state,
        })
    }

    /// Sets the learning rate and step count of the next step (call before recording it).
    pub fn prepare(&mut self, gpu: &Gpu) -> Result<f32> {
        let lr = self
            .config
            .schedule
            .lr(self.config.lr, self.taken, self.total_steps);
        match &mut self.rule {
            Rule::Sgd(s) => s.set_lr(gpu, lr)?,
            Rule::Adam(s) => s.set_step(gpu, lr, self.taken + 1)?,
        }
        self.taken += 1;
        Ok(lr)
    }

    pub fn kernel(&self) -> &Kernel {
        match &self.rule {
            Rule::Sgd(s) => s.kernel(),
            Rule::Adam(s) => s.kernel(),
        }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u32 {
        self.taken
    }

    /// The state buffers (momentum, or Adam's two moments), for checkpoints.
    pub fn state(&self) -> &[Tensor] {
        &self.state
    }

    /// Continues a run: the state buffers' contents and the steps already taken.
    pub fn restore(&mut self, gpu: &Gpu, state: &[Vec<f32>], taken: u32) -> Result<()> {
        if state.len() != self.state.len() {
            return Err(Error::Config(format!(
                "the saved optimizer has {} state buffers, {} needs {}",
                state.len(),
                self.config.kind.name(),
                self.state.len()
            )));
        }
        for (buffer, values) in self.state.iter().zip(state) {
            gpu.write_f32(buffer, values)?;
        }
        self.taken = taken;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_definitions() {
        assert_eq!(Schedule::Constant.lr(0.1, 57, 100), 0.1);
        let step: Schedule = "step:10:0.5".parse().unwrap();
        assert_eq!(step.lr(1.0, 9, 100), 1.0);
        assert_eq!(step.lr(1.0, 10, 100), 0.5);
        assert_eq!(step.lr(1.0, 25, 100), 0.25);
        let cosine: Schedule = "cosine:10".parse().unwrap();
        assert!(
            (cosine.lr(1.0, 0, 110) - 0.1).abs() < 1e-6,
            "warm-up starts at base/warmup"
        );
        assert!(
            (cosine.lr(1.0, 9, 110) - 1.0).abs() < 1e-6,
            "warm-up ends at base"
        );
        assert!(
            (cosine.lr(1.0, 60, 110) - 0.5).abs() < 1e-6,
            "half-way down the cosine"
        );
        assert!(cosine.lr(1.0, 110, 110).abs() < 1e-6, "ends at 0");
        assert!("step:0:0.5".parse::<Schedule>().is_err());
        assert!("linear".parse::<Schedule>().is_err());
    }
}
