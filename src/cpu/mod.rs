//! Plain-loop references of every kernel entry: the executable specification.
//!
//! Each function mirrors one WGSL entry point loop for loop, with the same shapes and
//! arguments, and is generic over [`Real`] so the tests can run it in f32 (to compare with
//! the GPU) and in f64 (for finite-difference gradient checks).

pub mod activation;
pub mod amp;
pub mod batchnorm;
pub mod conv2d;
pub mod dense;
pub mod distance;
pub mod dropout;
pub mod gather;
pub mod loss;
pub mod mining;
pub mod normalize;
pub mod optim;
pub mod pack;
pub mod photo;
pub mod pool;
pub mod residual;
pub mod similarity_loss;
pub mod topk;

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// The float operations the references need, for f32 and f64.
pub trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn ln_1p(self) -> Self;
    fn ln(self) -> Self;
    fn acos(self) -> Self;
    fn cos(self) -> Self;
    fn sin(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn powi(self, n: i32) -> Self;
    fn max(self, other: Self) -> Self {
        if self > other { self } else { other }
    }
    fn min(self, other: Self) -> Self {
        if self < other { self } else { other }
    }
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn acos(self) -> Self {
                <$t>::acos(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn powi(self, n: i32) -> Self {
                <$t>::powi(self, n)
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);
