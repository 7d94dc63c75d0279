//! Reference for `shaders/activation.wgsl` (to be written).
