//! The arithmetic a training step runs in.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::DType;

/// `F32` everywhere (the default), or mixed precision: the tower's activations, their
/// gradients and a per-step f16 copy of the weights are f16 (products accumulated in f32),
/// while the master weights, weight gradients, optimizer, embeddings and loss stay f32, under
/// a dynamic loss scale (PyTorch's autocast + GradScaler recipe). Needs an adapter with
/// 16-bit float shaders (wgpu's SHADER_F16); validation and evaluation run in f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Mixed,
}

impl Precision {
    /// The element type of the tower's activations.
    pub fn activations(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Mixed => DType::F16,
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "mixed" | "mixed_float16" | "mixed-f16" => Ok(Precision::Mixed),
            _ => Err(Error::Config(format!(
                "precision: unknown precision `{s}`: use f32 or mixed (f16 activations and \
                 weight copies, f32 master weights, dynamic loss scaling)"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for p in [Precision::F32, Precision::Mixed] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(
            "mixed_float16".parse::<Precision>().unwrap(),
            Precision::Mixed
        );
        let err = "f16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("use f32 or mixed"), "{err}");
    }
}
