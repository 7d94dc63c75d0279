//! Reference for `shaders/loss.wgsl` (to be written).
