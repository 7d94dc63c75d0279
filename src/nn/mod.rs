//! Layers and towers: a tower is declared as a spec (`conv 32 5 | relu | maxpool 2 | …`),
//! its shapes are inferred from the input size, its parameters live in one flat buffer
//! (views per layer), and it records itself onto a [`Tape`](crate::autograd::Tape).

pub mod params;
pub mod presets;
pub mod spec;
pub mod tower;

pub use params::{Init, ParamInfo, ParamLayout};
pub use presets::Preset;
pub use spec::{Layer, Node, TowerSpec};
pub use tower::{Tower, TowerWeights};
