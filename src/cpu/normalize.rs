//! Reference for `shaders/normalize.wgsl` (to be written).
