//! Reference for `shaders/pool.wgsl` (to be written).
