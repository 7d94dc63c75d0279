//! Launchers for `shaders/pool.wgsl` (to be written).
