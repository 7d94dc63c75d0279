//! `shaders/loss.wgsl` against `cpu::loss` (to be written).

mod common;
