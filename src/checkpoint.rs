//! Model weights in safetensors, named and shaped as PyTorch names the same layers
//! (`tower.<i>.weight` counting every layer of the spec, conv `[out, in, kh, kw]`, linear
//! `[out, in]`; torchvision's module names for the ResNet presets), so a PyTorch user loads
//! them into the equivalent module with `load_state_dict`. BatchNorm layers add their
//! running statistics as PyTorch's buffers: `running_mean`, `running_var` (f32) and
//! `num_batches_tracked` (i64, the training steps taken). The file also records the tower
//! spec and input shape in its metadata.
//! Files are written to a temporary name and renamed, so an existing one is never left
//! half-written.

use crate::files::write_atomic;
use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensorError;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::model::{ModelConfig, ModelValues, SiameseModel};
use crate::nn::ParamLayout;
use crate::vocab::{Distance, LossHyper};

fn distance_name(d: Distance) -> &'static str {
    match d {
        Distance::Euclidean => "euclidean",
        Distance::SquaredEuclidean => "squared_euclidean",
        Distance::L1 => "l1",
        Distance::Cosine => "cosine",
    }
}

/// Writes `values` of `model` to `path` with `metadata`.
pub fn save_weights(
    path: &Path,
    model: &SiameseModel,
    values: &ModelValues,
    metadata: HashMap<String, String>,
) -> Result<()> {
    save_checkpoint(path, model, values, &[], metadata)
}

/// Name prefix of the optimizer's state tensors in a checkpoint (never a model parameter).
pub const OPTIMIZER_PREFIX: &str = "optimizer.state.";

/// [`save_weights`] plus the optimizer's flat state buffers, as `optimizer.state.<i>`: one
/// file, so the weights and the state they go with are replaced together.
pub fn save_checkpoint(
    path: &Path,
    model: &SiameseModel,
    values: &ModelValues,
    optimizer_state: &[Vec<f32>],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let state = &model.tower.state;
    if values.params.len() != model.layout.len || values.running.len() != state.len {
        return Err(Error::Config(format!(
            "{} parameters and {} running statistics given for a model of {} and {}",
            values.params.len(),
            values.running.len(),
            model.layout.len,
            state.len
        )));
    }
    fn f32_views<'a>(
        layout: &ParamLayout,
        flat: &'a [f32],
    ) -> Vec<std::result::Result<(String, TensorView<'a>), SafeTensorError>> {
        let bytes: &[u8] = bytemuck::cast_slice(flat);
        layout
            .params
            .iter()
            .map(|p| {
                let data = &bytes[4 * p.offset..4 * (p.offset + p.len())];
                TensorView::new(Dtype::F32, p.shape.clone(), data).map(|v| (p.name.clone(), v))
            })
            .collect()
    }
    // One `num_batches_tracked` per BatchNorm layer, beside its running mean.
    let tracked = values.batches_tracked.to_le_bytes();
    let tracked_views = state
        .params
        .iter()
        .filter_map(|p| p.name.strip_suffix(".running_mean"))
        .map(|layer| {
            TensorView::new(Dtype::I64, vec![], &tracked)
                .map(|v| (format!("{layer}.num_batches_tracked"), v))
        });
    let views = f32_views(&model.layout, &values.params)
        .into_iter()
        .chain(f32_views(state, &values.running))
        .chain(tracked_views)
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
    info.insert("freeze".into(), cfg.freeze.join(","));
    if cfg.loss.uses_classes() {
        let h = &cfg.hyper;
        info.insert("classes".into(), cfg.classes.to_string());
        info.insert("scale".into(), h.scale.to_string());
        info.insert("sub_centers".into(), h.sub_centers.to_string());
        info.insert("beta".into(), h.beta.to_string());
        info.insert("base".into(), h.base.to_string());
        info.insert("epsilon".into(), h.epsilon.to_string());
        if let Some(alpha) = h.alpha {
            info.insert("alpha".into(), alpha.to_string());
        }
        if let Some(t) = h.temperature {
            info.insert("temperature".into(), t.to_string());
        }
    }
    let buffer = safetensors::serialize(views, Some(info))
        .map_err(|e| Error::Config(format!("cannot serialise the checkpoint: {e}")))?;
    write_atomic(path, &buffer)
        .map_err(|e| Error::Data(format!("cannot write {}: {e}", path.display())))
}

/// Adds `entries` to the metadata of the checkpoint at `path` (replacing keys it has),
/// keeping every tensor as it is; the file is replaced whole, through a rename.
pub fn add_metadata(path: &Path, entries: &[(&str, String)]) -> Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let not_safetensors = |e: SafeTensorError| {
        Error::Data(format!("{} is not a safetensors file: {e}", path.display()))
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(not_safetensors)?;
    let mut info = header.metadata().clone().unwrap_or_default();
    for (key, value) in entries {
        info.insert(key.to_string(), value.clone());
    }
    let file = SafeTensors::deserialize(&bytes).map_err(not_safetensors)?;
    let buffer = safetensors::serialize(file.tensors(), Some(info))
        .map_err(|e| Error::Config(format!("cannot serialise the checkpoint: {e}")))?;
    write_atomic(path, &buffer).map_err(|e| Error::writing(path.display(), e))
}

/// Reads the values written by [`save_weights`] for `model`, checking every tensor's name and
/// shape; a checkpoint of another architecture is refused with what differs.
pub fn load_weights(path: &Path, model: &SiameseModel) -> Result<ModelValues> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Data(format!("{} is not a safetensors file: {e}", path.display())))?;
    let mut differences = Vec::new();
    let mut read = |layout: &ParamLayout| {
        let mut flat = vec![0.0f32; layout.len];
        for p in &layout.params {
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
        flat
    };
    let params = read(&model.layout);
    let running = read(&model.tower.state);
    let state = &model.tower.state;
    let known = |name: &str| {
        model.layout.params.iter().any(|p| p.name == name)
            || state.params.iter().any(|p| p.name == name)
            || name.starts_with(OPTIMIZER_PREFIX)
    };
    let mut batches_tracked = 0;
    for name in file.names() {
        if let Some(layer) = name.strip_suffix(".num_batches_tracked")
            && known(&format!("{layer}.running_mean"))
        {
            let t = file.tensor(name).expect("a listed name");
            match <[u8; 8]>::try_from(t.data()) {
                Ok(v) if t.dtype() == Dtype::I64 => batches_tracked = i64::from_le_bytes(v),
                _ => differences.push(format!(
                    "{name} is {:?} {:?}, the model needs an I64 scalar",
                    t.dtype(),
                    t.shape()
                )),
            }
        } else if !known(name) {
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
    Ok(ModelValues {
        params,
        running,
        batches_tracked,
    })
}

/// A model rebuilt from a checkpoint's metadata, with its values and all the metadata
/// (callers read their own keys, e.g. the pixel normalisation).
pub fn load_model(path: &Path) -> Result<(SiameseModel, ModelValues, HashMap<String, String>)> {
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
    // The class head's keys, written for the losses on class-labelled batches only.
    fn optional<T: std::str::FromStr>(
        meta: &HashMap<String, String>,
        key: &str,
        bad: &dyn Fn(&str, &str) -> Error,
    ) -> Result<Option<T>> {
        meta.get(key)
            .map(|v| v.parse().map_err(|_| bad(key, v)))
            .transpose()
    }
    let defaults = LossHyper::default();
    let hyper = LossHyper {
        scale: optional(&meta, "scale", &bad)?.unwrap_or(defaults.scale),
        sub_centers: optional(&meta, "sub_centers", &bad)?.unwrap_or(defaults.sub_centers),
        alpha: optional(&meta, "alpha", &bad)?,
        beta: optional(&meta, "beta", &bad)?.unwrap_or(defaults.beta),
        base: optional(&meta, "base", &bad)?.unwrap_or(defaults.base),
        epsilon: optional(&meta, "epsilon", &bad)?.unwrap_or(defaults.epsilon),
        temperature: optional(&meta, "temperature", &bad)?,
    };
    let config = ModelConfig {
        hyper,
        classes: optional(&meta, "classes", &bad)?.unwrap_or(0),
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
        freeze: meta
            .get("freeze")
            .map(|v| {
                v.split(',')
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let model = SiameseModel::new(config)?;
    let values = load_weights(path, &model)?;
    Ok((model, values, meta))
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

/// What [`init_from`] did with a file of weights trained elsewhere.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InitReport {
    /// Tower tensors loaded from the file.
    pub loaded: Vec<String>,
    /// Tower tensors left at their initialisation, each with why.
    pub initialised: Vec<String>,
    /// Tensors of the file the model has no place for.
    pub ignored: Vec<String>,
}

impl std::fmt::Display for InitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| match v.len() {
            0 => "none".to_string(),
            n if n <= 8 => v.join(", "),
            n => format!("{}, … ({n} in all)", v[..6].join(", ")),
        };
        writeln!(
            f,
            "loaded {} tensors: {}",
            self.loaded.len(),
            list(&self.loaded)
        )?;
        writeln!(f, "left at initialisation: {}", list(&self.initialised))?;
        write!(f, "ignored from the file: {}", list(&self.ignored))
    }
}

/// Loads into `values` the tower tensors of a PyTorch `state_dict` saved with safetensors
/// (`save_file(model.state_dict(), path)`): every tensor whose name matches a tower tensor
/// (`conv1.weight` for `tower.conv1.weight`; the `tower.` of our own files, and `module.`
/// of `DataParallel` files, are accepted too) and whose shape matches, in f32, f16 or bf16;
/// the BatchNorm buffers included. The embedding layer (the tower's last dense layer) of
/// another width is left at its initialisation, as is every mismatched tensor when
/// `allow_mismatch`; otherwise a mismatch is an error naming both shapes. A file that
/// matches nothing is refused.
pub fn init_from(
    path: &Path,
    model: &SiameseModel,
    values: &mut ModelValues,
    allow_mismatch: bool,
) -> Result<InitReport> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Data(format!("{} is not a safetensors file: {e}", path.display())))?;
    let bare = |name: &str| {
        let name = name.strip_prefix("module.").unwrap_or(name);
        name.strip_prefix("tower.").unwrap_or(name).to_string()
    };
    let by_name: HashMap<String, String> = file
        .names()
        .into_iter()
        .map(|name| (bare(name), name.to_string()))
        .collect();
    let embedding = last_dense_prefix(model);
    let mut report = InitReport::default();
    let mut mismatches = Vec::new();
    let mut used = std::collections::HashSet::new();
    let layouts = [
        (&model.layout, &mut values.params),
        (&model.tower.state, &mut values.running),
    ];
    for (layout, flat) in layouts {
        for p in layout
            .params
            .iter()
            .filter(|p| p.name.starts_with("tower."))
        {
            let bare = &p.name["tower.".len()..];
            let Some(file_name) = by_name.get(bare) else {
                report.initialised.push(format!("{bare} (not in the file)"));
                continue;
            };
            used.insert(file_name.clone());
            let t = file.tensor(file_name).expect("a listed name");
            if t.shape() != p.shape.as_slice() {
                let why = format!(
                    "{bare}: the file's is {:?}, the model's {:?}",
                    t.shape(),
                    p.shape
                );
                let in_embedding = embedding
                    .as_deref()
                    .and_then(|e| bare.strip_prefix(e))
                    .is_some_and(|rest| rest.starts_with('.'));
                if allow_mismatch || in_embedding {
                    report
                        .initialised
                        .push(format!("{why} (kept at initialisation)"));
                } else {
                    mismatches.push(why);
                }
                continue;
            }
            let dst = &mut flat[p.offset..p.offset + p.len()];
            read_floats(t.dtype(), t.data(), dst).map_err(|dtype| {
                Error::Data(format!(
                    "{}: {file_name} is {dtype:?}; weights must be F32, F16 or BF16",
                    path.display()
                ))
            })?;
            report.loaded.push(bare.to_string());
        }
    }
    let mut tracked = Vec::new();
    for name in file.names() {
        if used.contains(name) {
            continue;
        }
        let t = file.tensor(name).expect("a listed name");
        let tracks_ours = bare(name)
            .strip_suffix(".num_batches_tracked")
            .is_some_and(|layer| by_name.contains_key(&format!("{layer}.running_mean")));
        match <[u8; 8]>::try_from(t.data()) {
            Ok(v) if tracks_ours && t.dtype() == Dtype::I64 => tracked.push(i64::from_le_bytes(v)),
            _ => report.ignored.push(name.to_string()),
        }
    }
    report.ignored.sort();
    if !mismatches.is_empty() {
        mismatches.truncate(4);
        return Err(Error::Config(format!(
            "{} does not fit the tower `{}` (another architecture?): {}; pass \
             --init-allow-mismatch to keep such tensors at their initialisation",
            path.display(),
            model.config.tower,
            mismatches.join("; ")
        )));
    }
    if report.loaded.is_empty() {
        let mut names = file.names();
        names.sort();
        names.truncate(4);
        return Err(Error::Config(format!(
            "{} has no tensor of the tower `{}` (its names begin {}; the tower's are e.g. \
             {}): a state_dict of another architecture?",
            path.display(),
            model.config.tower,
            names.join(", "),
            model
                .layout
                .params
                .iter()
                .take(3)
                .map(|p| p.name.trim_start_matches("tower."))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(&max) = tracked.iter().max() {
        values.batches_tracked = max;
    }
    Ok(report)
}

/// The name of the tower's last dense layer (the embedding), without `tower.`.
fn last_dense_prefix(model: &SiameseModel) -> Option<String> {
    model
        .layout
        .params
        .iter()
        .rev()
        .filter(|p| p.shape.len() == 2)
        .find_map(|p| p.name.strip_prefix("tower.")?.strip_suffix(".weight"))
        .map(String::from)
}

/// Little-endian floats of `dtype` in `data` into `dst` (same count, the shape checked), or
/// the dtype if it is not a float type.
fn read_floats(dtype: Dtype, data: &[u8], dst: &mut [f32]) -> std::result::Result<(), Dtype> {
    match dtype {
        Dtype::F32 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(4)) {
                *d = f32::from_le_bytes(b.try_into().expect("4 bytes"));
            }
        }
        Dtype::F16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        other => return Err(other),
    }
    Ok(())
}
