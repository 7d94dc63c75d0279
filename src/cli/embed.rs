//! `siamese embed`: a dataset split through a trained model (or a tower with weights trained
//! elsewhere), written as a float32 `[N, D]` array in dataset order (.npy, or .safetensors
//! with the labels and class names).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use siamese_gpu::Gpu;
use siamese_gpu::data::dataset;
use siamese_gpu::data::images::ImageSet;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::files::write_atomic;
use siamese_gpu::model::ModelTensors;
use siamese_gpu::ops::gather;
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::settings::RunSettings;

#[derive(Args)]
pub struct EmbedArgs {
    /// The run directory of `train --out` (or its model.safetensors); or, without one, a
    /// tower with weights trained elsewhere (--tower and --init-from).
    #[arg(
        long,
        required_unless_present = "init_from",
        conflicts_with = "init_from"
    )]
    checkpoint: Option<PathBuf>,
    /// Without --checkpoint: the tower (a spec or a preset such as resnet18).
    #[arg(long, requires = "init_from")]
    tower: Option<String>,
    /// Without --checkpoint: the weights, a PyTorch state_dict saved with safetensors.
    #[arg(long, value_name = "FILE.safetensors", requires = "tower")]
    init_from: Option<PathBuf>,
    /// With --init-from: keep tensors whose shape differs at their initialisation.
    #[arg(long, requires = "init_from")]
    init_allow_mismatch: bool,
    /// Without --checkpoint: folder images are resized to HxW [default: the first image's size].
    #[arg(long, requires = "init_from")]
    image_size: Option<String>,
    /// Without --checkpoint: grey (1 channel) or rgb (3).
    #[arg(long, requires = "init_from", default_value = "grey")]
    color: String,
    /// Without --checkpoint: unit (pixel/255) or standard:MEAN:STD.
    #[arg(long, requires = "init_from", default_value = "unit")]
    pixel_norm: String,
    /// Dataset directory [default: the run's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which images: train (without the validation hold-out), val, or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Validation images held out of train [default: the run's, else min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Output file: .npy (the [N, D] array) or .safetensors (`embeddings` [N, D] and
    /// `labels` [N], class names in the metadata).
    #[arg(long)]
    out: PathBuf,
    /// npy or safetensors [default: from the extension of --out, else npy].
    #[arg(long)]
    format: Option<String>,
}

pub fn run(args: &EmbedArgs) -> Result<()> {
    let format = match args.format.as_deref() {
        Some(f) => f.to_string(),
        None if args.out.extension().is_some_and(|e| e == "safetensors") => "safetensors".into(),
        None => "npy".into(),
    };
    if !["npy", "safetensors"].contains(&format.as_str()) {
        return Err(Error::Config(format!(
            "unknown --format `{format}`: use npy or safetensors"
        )));
    }
    let warn = &mut |w: &str| eprintln!("warning: {w}");
    let (run, data) = match &args.checkpoint {
        Some(checkpoint) => {
            let run = SavedRun::load(checkpoint)?;
            let data = run.dataset(args.data.as_deref(), args.val_images, warn)?;
            (run, data)
        }
        None => {
            let settings = RunSettings {
                tower: args.tower.clone().expect("clap requires --tower"),
                init_from: args.init_from.clone(),
                init_allow_mismatch: args.init_allow_mismatch,
                image_size: args.image_size.clone(),
                color: args.color.clone(),
                pixel_norm: args.pixel_norm.clone(),
                data: args.data.clone(),
                val_images: args.val_images,
                ..RunSettings::default()
            };
            let data = dataset::load_with(
                settings.data.as_deref(),
                settings.val_images,
                &settings.data_options()?,
            )?;
            data.warnings.iter().for_each(|w| warn(w));
            let run = SavedRun::from_weights(settings, &data, &mut |n| eprintln!("{n}"))?;
            (run, data)
        }
    };
    let (set, classes) = match args.split.as_str() {
        "train" => (&data.train, &data.train_classes),
        "val" => (&data.val, &data.train_classes),
        "test" => (&data.test, &data.test_classes),
        other => {
            return Err(Error::Config(format!(
                "unknown split `{other}`: use train, val or test"
            )));
        }
    };
    run.check_size(set, &args.split)?;
    let gpu = Gpu::new()?;
    // A bar with images/s and ETA on a terminal; nothing in a pipe (the result line follows).
    let bar = std::io::stderr().is_terminal().then(|| {
        let style =
            ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
                .expect("a valid progress template");
        ProgressBar::new(set.count as u64).with_style(style)
    });
    let embed = || -> Result<Vec<f32>> {
        let images = gather::upload_images(&gpu, &set.images, set.count, set.pixels())?;
        let values = ModelTensors::upload(&gpu, &run.model, &run.values)?;
        let all: Vec<u32> = (0..set.count as u32).collect();
        Embedder::new(&gpu, &run.model, &values, run.norm, 500)?.embed_indices_reporting(
            &images,
            &all,
            &mut |done| {
                if let Some(bar) = &bar {
                    bar.set_position(done as u64);
                }
            },
        )
    };
    let e = embed();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let e = e?;
    let dim = run.model.embedding_dim();
    let written = if format == "npy" {
        write_npy(&args.out, &e, set.count, dim)
    } else {
        write_embeddings_safetensors(&args.out, &e, set, dim, classes, &args.split)
    };
    written.map_err(|e| Error::writing(args.out.display(), e))?;
    println!(
        "wrote the {} split's embeddings, float32 [{}, {dim}], to {}",
        args.split,
        set.count,
        args.out.display()
    );
    Ok(())
}

/// Writes a float32 `[rows, cols]` array as .npy, through a temporary file and a rename.
fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let mut bytes = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[rows as u64, cols as u64])
        .writer(&mut bytes)
        .begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    write_atomic(path, &bytes)
}

/// Writes `embeddings` [N, D] f32 and `labels` [N] u8 as safetensors, the class name of
/// each label in the metadata, through a temporary file and a rename.
fn write_embeddings_safetensors(
    path: &Path,
    embeddings: &[f32],
    set: &ImageSet,
    dim: usize,
    classes: &[String],
    split: &str,
) -> std::io::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let invalid = |e: safetensors::SafeTensorError| std::io::Error::other(e.to_string());
    let views = [
        (
            "embeddings",
            TensorView::new(
                Dtype::F32,
                vec![set.count, dim],
                bytemuck::cast_slice(embeddings),
            )
            .map_err(invalid)?,
        ),
        (
            "labels",
            TensorView::new(Dtype::U8, vec![set.count], &set.labels).map_err(invalid)?,
        ),
    ];
    let metadata = [
        ("split".to_string(), split.to_string()),
        ("classes".to_string(), json!(classes).to_string()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(invalid)?;
    write_atomic(path, &bytes)
}
