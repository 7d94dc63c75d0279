//! Model weights in safetensors, named and shaped as PyTorch names the same layers
//! (`tower.<i>.weight` counting every layer of the spec, conv `[out, in, kh, kw]`, linear
//! `[out, in]`), so a PyTorch user loads them into the equivalent `nn.Sequential` with
//! `load_state_dict`. The file also records the tower spec and input shape in its metadata.
//! Files are written to a temporary name and renamed, so an existing one is never left
//! half-written.

use crate::files::write_atomic;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::model::{ModelConfig, SiameseModel};
use crate::vocab::Distance;

fn distance_name(d: Distance) -> &'static str {
    match d {
        Distance::Euclidean => "euclidean",
        Distance::SquaredEuclidean => "squared_euclidean",
        Distance::L1 => "l1",
        Distance::Cosine => "cosine",
    }
}

/// Writes the parameters `flat` (the model's flat layout) to `path` with `metadata`.
pub fn save_weights(
    path: &Path,
    model: &SiameseModel,
    flat: &[f32],
    metadata: HashMap<String, String>,
) -> Result<()> {
    save_checkpoint(path, model, flat, &[], metadata)
}

/// Name prefix of the optimizer's state tensors in a checkpoint (never a model parameter).
pub const OPTIMIZER_PREFIX: &str = "optimizer.state.";

/// [`save_weights`] plus the optimizer's flat state buffers, as `optimizer.state.<i>`: one
/// file, so the weights and the state they go with are replaced together.
pub fn save_checkpoint(
    path: &Path,
    model: &SiameseModel,
    flat: &[f32],
    optimizer_state: &[Vec<f32>],
    metadata: HashMap<String, String>,
) -> Result<()> {
    if flat.len() != model.layout.len {
        return Err(Error::Config(format!(
            "{} parameters given for a model of {}",
            flat.len(),
            model.layout.len
        )));
    }
    let bytes: &[u8] = bytemuck::cast_slice(flat);
    let views = model
        .layout
        .params
        .iter()
        .map(|p| {
            let data = &bytes[4 * p.offset..4 * (p.offset + p.len())];
            TensorView::new(Dtype::F32, p.shape.clone(), data).map(|v| (p.name.clone(), v))
        })
        .chain(optimizer_state.iter().enumerate().map(|(i, state)| {
            let data: &[u8] = bytemuck::cast_slice(state);
            TensorView::new(Dtype::F32, vec![state.len()], data)
                .map(|v| (format!("{OPTIMIZER_PREFIX}{i}"), v))
        }))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("cannot lay out the checkpoint: {e}")))?;
    let mut info = metadata;
    let cfg = &model.config;
    info.insert("tower".into(), cfg.tower.to_string());
    let [c, h, w] = cfg.input;
    info.insert("input".into(), format!("{c},{h},{w}"));
    info.insert("loss".into(), cfg.loss.to_string());
    info.insert("margin".into(), cfg.margin.to_string());
    info.insert("distance".into(), distance_name(cfg.distance).into());
    info.insert("normalize".into(), cfg.normalize.to_string());
    let buffer = safetensors::serialize(views, Some(info))
        .map_err(|e| Error::Config(format!("cannot serialise the checkpoint: {e}")))?;
    write_atomic(path, &buffer)
        .map_err(|e| Error::Data(format!("cannot write {}: {e}", path.display())))
}

/// Reads weights written by [`save_weights`] for `model`, checking every tensor's name and
/// shape; a checkpoint of another architecture is refused with what differs.
pub fn load_weights(path: &Path, model: &SiameseModel) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Data(format!("{} is not a safetensors file: {e}", path.display())))?;
    let mut flat = vec![0.0f32; model.layout.len];
    let mut differences = Vec::new();
    for p in &model.layout.params {
        match file.tensor(&p.name) {
            Err(_) => differences.push(format!("{} {:?} is missing", p.name, p.shape)),
            Ok(t) if t.dtype() != Dtype::F32 || t.shape() != p.shape.as_slice() => differences
                .push(format!(
                    "{} is {:?} {:?}, the model needs F32 {:?}",
                    p.name,
                    t.dtype(),
                    t.shape(),
                    p.shape
                )),
            Ok(t) => {
                for (dst, src) in flat[p.offset..p.offset + p.len()]
                    .iter_mut()
                    .zip(t.data().chunks_exact(4))
                {
                    *dst = f32::from_le_bytes(src.try_into().expect("4-byte chunks"));
                }
            }
        }
    }
    let known: Vec<&str> = model
        .layout
        .params
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for name in file.names() {
        if !known.contains(&name) && !name.starts_with(OPTIMIZER_PREFIX) {
            differences.push(format!("{name} is not part of this model"));
        }
    }
    if !differences.is_empty() {
        return Err(Error::Config(format!(
            "{} does not fit the model `{}`: {}",
            path.display(),
            model.config.tower,
            differences.join("; ")
        )));
    }
    Ok(flat)
}

/// A model rebuilt from a checkpoint's metadata, with its weights and all the metadata
/// (callers read their own keys, e.g. the pixel normalisation).
pub fn load_model(path: &Path) -> Result<(SiameseModel, Vec<f32>, HashMap<String, String>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Data(format!("{} is not a safetensors file: {e}", path.display())))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |key: &str| {
        meta.get(key).cloned().ok_or_else(|| {
            Error::Data(format!(
                "{} has no `{key}` in its metadata: it was not written by siamese train",
                path.display()
            ))
        })
    };
    let bad = |key: &str, value: &str| {
        Error::Data(format!(
            "{}: metadata `{key}` = `{value}` is not understood",
            path.display()
        ))
    };
    let input: Vec<usize> = field("input")?
        .split(',')
        .map(|v| v.parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("input", &meta["input"]))?;
    let input: [usize; 3] = input.try_into().map_err(|_| bad("input", &meta["input"]))?;
    let distance = match field("distance")?.as_str() {
        "euclidean" => Distance::Euclidean,
        "squared_euclidean" => Distance::SquaredEuclidean,
        "l1" => Distance::L1,
        "cosine" => Distance::Cosine,
        other => return Err(bad("distance", other)),
    };
    let config = ModelConfig {
        tower: field("tower")?.parse()?,
        input,
        loss: field("loss")?.parse()?,
        margin: field("margin")?
            .parse()
            .map_err(|_| bad("margin", &meta["margin"]))?,
        distance,
        normalize: field("normalize")?
            .parse()
            .map_err(|_| bad("normalize", &meta["normalize"]))?,
    };
    let model = SiameseModel::new(config)?;
    let params = load_weights(path, &model)?;
    Ok((model, params, meta))
}

/// The optimizer state buffers saved by [`save_checkpoint`], in order (empty if none).
pub fn load_optimizer_state(path: &Path) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Data(format!("{} is not a safetensors file: {e}", path.display())))?;
    let mut state = Vec::new();
    while let Ok(t) = file.tensor(&format!("{OPTIMIZER_PREFIX}{}", state.len())) {
        state.push(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        );
    }
    Ok(state)
}
