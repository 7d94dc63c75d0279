//! Launchers for `shaders/distance.wgsl` (to be written).
