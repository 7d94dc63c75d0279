//! Launchers for `shaders/loss.wgsl` (to be written).
