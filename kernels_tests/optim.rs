//! `shaders/optim.wgsl` against `cpu::optim` (to be written).

mod common;
