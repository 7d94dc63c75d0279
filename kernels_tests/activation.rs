//! `shaders/activation.wgsl` against `cpu::activation` (to be written).

mod common;
