//! Reference for `shaders/optim.wgsl` (to be written).
