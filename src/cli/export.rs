//! `siamese export`: a trained model as a standard ONNX graph (see `siamese_gpu::export`),
//! for ONNX Runtime, TensorRT, OpenVINO or a phone; a BCE run's head beside it.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::export::{OPSET, head_model, tower_model, write_model};
use siamese_gpu::runs::saved::SavedRun;

use super::embed::check_writable;

#[derive(Args)]
pub struct ExportArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The format: onnx (opset 17, any batch size).
    #[arg(long, default_value = "onnx")]
    format: String,
    /// The file to write, e.g. model.onnx (a BCE run's head goes to model.head.onnx).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    if args.format != "onnx" {
        return Err(Error::Config(format!(
            "unknown --format `{}`: export writes onnx",
            args.format
        )));
    }
    check_writable(&args.out)?;
    let run = SavedRun::load(&args.checkpoint)?;
    let [c, h, w] = run.model.config.input;
    let points: serde_json::Map<String, serde_json::Value> = run
        .operating_points
        .iter()
        .map(|p| (p.name.clone(), json!(p.threshold)))
        .collect();
    let meta: Vec<(String, String)> = [
        ("siamese.settings", run.settings.to_toml()),
        ("siamese.fingerprint", run.fingerprint()),
        ("siamese.input", format!("float32 [N, {c}, {h}, {w}], pixels in [0, 1] (torchvision's ToTensor); normalised inside the graph as (x - {}) * {}", run.norm.shift, run.norm.scale)),
        ("siamese.distance", format!("{:?}", run.model.config.distance).to_lowercase()),
        ("siamese.operating_points", json!(points).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let tower = tower_model(&run, &meta)?;
    write_model(&tower, &args.out)?;
    let nodes = tower.graph.as_ref().map_or(0, |g| g.node.len());
    println!(
        "wrote {} (ONNX opset {OPSET}, {nodes} nodes): images float32 [N, {c}, {h}, {w}] in [0, 1] → embeddings [N, {}]",
        args.out.display(),
        run.model.embedding_dim()
    );
    if let Some(head) = head_model(&run, &meta) {
        let path = args.out.with_extension("head.onnx");
        write_model(&head, &path)?;
        println!(
            "wrote {}: embedding_a, embedding_b [N, {}] → probability [N, 1] (the BCE head)",
            path.display(),
            run.model.embedding_dim()
        );
    }
    Ok(())
}
