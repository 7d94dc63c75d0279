//! `shaders/reduce.wgsl` against `cpu::reduce` (to be written).

mod common;
