//! `shaders/pool.wgsl` against `cpu::pool` (to be written).

mod common;
