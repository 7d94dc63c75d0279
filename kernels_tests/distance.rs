//! `shaders/distance.wgsl` against `cpu::distance` (to be written).

mod common;
