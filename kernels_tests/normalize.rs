//! `shaders/normalize.wgsl` against `cpu::normalize` (to be written).

mod common;
