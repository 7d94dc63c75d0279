//! Launchers for `shaders/activation.wgsl` (to be written).
