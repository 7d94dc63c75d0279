//! `shaders/conv2d.wgsl` against `cpu::conv2d` (to be written).

mod common;
