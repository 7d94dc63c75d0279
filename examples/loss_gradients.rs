//! Every loss on class-labelled batches, its value and its gradients, on seeded embeddings,
//! written out for comparison with pytorch-metric-learning (`scripts/check_losses.py`).
//!
//!     cargo run --release --example loss_gradients -- OUT.safetensors
//!
//! The embeddings `embeddings [N, D]` (not normalised: the cosine normalises them) and
//! their `labels [N]` (a P×K batch) are drawn from seed 0, and each class head's weights
//! from seed 1. For each loss the GPU runs the tape a training step records — the cosine
//! distances of the embeddings to the class weights (or to each other), the loss, its
//! backward — and the file holds `<loss>.grad_embeddings [N, D]`, for the class heads
//! `<loss>.weights` and `<loss>.grad_weights` (`[C·K, D]`, a class's K sub-centers in
//! consecutive rows; ProxyAnchor's `[C, D]` proxies), and in its metadata the GPU's loss
//! `<loss>.loss` and the CPU reference's `<loss>.cpu_loss` (`cpu::distance` then
//! `cpu::similarity_loss`, in f64). Hyper-parameters are pytorch-metric-learning's
//! defaults, ArcFace's margin 0.5 rad (its 28.6° is that angle rounded).

use std::collections::HashMap;
use std::path::Path;

use rand::{RngExt, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use siamese_gpu::autograd::Tape;
use siamese_gpu::cpu::{distance as cpu_distance, similarity_loss as cpu};
use siamese_gpu::vocab::{LOSSES, LossHyper, PairwiseMetric, SimilarityLoss};
use siamese_gpu::{DType, Gpu, Result};

const CLASSES: usize = 4;
const PER_CLASS: usize = 8;
const DIM: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: loss_gradients OUT.safetensors");
        std::process::exit(2);
    };
    if let Err(e) = run(Path::new(out)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn normal(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    // Box–Muller: standard normal draws.
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn run(out: &Path) -> Result<()> {
    let n = CLASSES * PER_CLASS;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let embeddings = normal(&mut rng, n * DIM);
    let labels: Vec<u32> = (0..n).map(|i| (i % CLASSES) as u32).collect();
    let gpu = Gpu::new()?;
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> =
        vec![("embeddings".into(), embeddings.clone(), vec![n, DIM])];
    let mut metadata = HashMap::new();
    for kind in LOSSES.into_iter().filter(|l| l.uses_classes()) {
        let loss = kind
            .similarity(kind.default_margin(), &LossHyper::default())
            .expect("a loss on class-labelled batches");
        let rows = if loss.learns_classes() {
            CLASSES * loss.columns_per_class()
        } else {
            0
        };
        let weights = normal(&mut rand::rngs::StdRng::seed_from_u64(1), rows * DIM);
        let (value, grad_e, grad_w) = gpu_step(&gpu, loss, &embeddings, &labels, &weights)?;
        let cpu_value = cpu_loss(loss, &embeddings, &labels, &weights);
        println!(
            "{:<18} GPU {value:<12} CPU reference {cpu_value}",
            kind.to_string()
        );
        metadata.insert(format!("{kind}.loss"), value.to_string());
        metadata.insert(format!("{kind}.cpu_loss"), cpu_value.to_string());
        tensors.push((format!("{kind}.grad_embeddings"), grad_e, vec![n, DIM]));
        if rows > 0 {
            tensors.push((format!("{kind}.weights"), weights, vec![rows, DIM]));
            tensors.push((format!("{kind}.grad_weights"), grad_w, vec![rows, DIM]));
        }
    }
    let label_bytes: Vec<u8> = labels
        .iter()
        .flat_map(|&l| (l as i64).to_le_bytes())
        .collect();
    let mut views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, values, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
                .expect("a tensor view");
            (name.clone(), view)
        })
        .collect();
    views.push((
        "labels".into(),
        TensorView::new(Dtype::I64, vec![n], &label_bytes).expect("a tensor view"),
    ));
    let bytes = safetensors::serialize(views, Some(metadata)).expect("serialise");
    std::fs::write(out, bytes).expect("write the output");
    println!("wrote {}", out.display());
    Ok(())
}

/// The loss and the gradients of the embeddings and of the class weights (empty without a
/// class head), through the tape as a training step records it.
fn gpu_step(
    gpu: &Gpu,
    loss: SimilarityLoss,
    embeddings: &[f32],
    labels: &[u32],
    weights: &[f32],
) -> Result<(f32, Vec<f32>, Vec<f32>)> {
    let n = labels.len();
    let mut tape = Tape::new(gpu);
    let grad_e = gpu.zeros(&[n, DIM], DType::F32)?;
    let e = tape.param(gpu.upload_f32(embeddings, &[n, DIM])?, Some(grad_e.clone()))?;
    let classes = gpu.upload_u32(labels, &[n])?;
    let (value, grad_w) = if loss.learns_classes() {
        let rows = weights.len() / DIM;
        let grad_w = gpu.zeros(&[rows, DIM], DType::F32)?;
        let w = tape.param(gpu.upload_f32(weights, &[rows, DIM])?, Some(grad_w.clone()))?;
        let dm = tape.pairwise(PairwiseMetric::Cosine, e, w)?;
        (
            tape.similarity_loss(loss, dm, &classes, None)?.0,
            Some(grad_w),
        )
    } else {
        let dm = tape.pairwise(PairwiseMetric::Cosine, e, e)?;
        let window = gpu.upload_u32(&cpu::Window::batch(n).words(), &[4])?;
        let value = tape
            .similarity_loss(loss, dm, &classes, Some((&classes, &window)))?
            .0;
        (value, None)
    };
    let backward = tape.backward(value)?;
    let kernels: Vec<_> = tape.forward_kernels().chain(backward.iter()).collect();
    gpu.run(&kernels);
    Ok((
        gpu.read_f32(tape.tensor(value))?[0],
        gpu.read_f32(&grad_e)?,
        match grad_w {
            Some(g) => gpu.read_f32(&g)?,
            None => Vec::new(),
        },
    ))
}

/// The CPU reference's loss in f64: the pairwise cosine distances, then the loss.
fn cpu_loss(loss: SimilarityLoss, embeddings: &[f32], labels: &[u32], weights: &[f32]) -> f64 {
    let e: Vec<f64> = embeddings.iter().map(|&v| v as f64).collect();
    let n = labels.len();
    let (reference, r) = if loss.learns_classes() {
        (
            weights.iter().map(|&v| v as f64).collect(),
            weights.len() / DIM,
        )
    } else {
        (e.clone(), n)
    };
    let dm = cpu_distance::pairwise_cosine_forward(&e, &reference, n, r, DIM);
    let sims = cpu::Similarities {
        dm: &dm,
        n,
        r,
        labels,
        ref_labels: if loss.learns_classes() { &[] } else { labels },
        window: if loss.learns_classes() {
            cpu::Window::all(r)
        } else {
            cpu::Window::batch(r)
        },
    };
    cpu::forward(loss, &sims).0
}
