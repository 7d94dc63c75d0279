//! One training-mode step of a tower on given images, written out for comparison with
//! PyTorch (`scripts/check_torchvision.py`): the contrastive loss of pairs (margin 1,
//! Euclidean, mean over the pairs) of the tower's embeddings, its gradient with respect to
//! every parameter, and the BatchNorm running statistics the step's forward left.
//!
//!     cargo run --release --example tower_step -- TOWER WEIGHTS.safetensors INPUT.safetensors OUT.safetensors
//!
//! INPUT holds `images` f32 [2B, C, H, W] (the B left images, then the B right ones, as the
//! network sees them: already normalised) and `same` f32 [B] (1 for a Same pair, 0 for a
//! Different one). OUT holds the gradients under the parameters' names, the running
//! statistics under theirs (`num_batches_tracked` is the loaded one plus one), and the loss
//! in its metadata (`step_loss`).

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use siamese_gpu::autograd::Tape;
use siamese_gpu::checkpoint::{init_from, save_weights};
use siamese_gpu::model::{ModelConfig, ModelTensors, ModelValues, SiameseModel, Weights};
use siamese_gpu::vocab::{Distance, LossKind, Mode, PairLabel};
use siamese_gpu::{DType, Gpu, Result};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tower, weights, input, out] = args.as_slice() else {
        eprintln!("usage: tower_step TOWER WEIGHTS.safetensors INPUT.safetensors OUT.safetensors");
        std::process::exit(2);
    };
    if let Err(e) = step(tower, Path::new(weights), Path::new(input), Path::new(out)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// A tensor of the input file as f32 values and its shape.
fn read(file: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("the input has no `{name}`"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "`{name}` must be f32");
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    (values, t.shape().to_vec())
}

fn step(tower: &str, weights: &Path, input: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(input).expect("the input file");
    let file = SafeTensors::deserialize(&bytes).expect("a safetensors input");
    let (images, shape) = read(&file, "images");
    let (same, _) = read(&file, "same");
    let &[n, c, h, w] = shape.as_slice() else {
        panic!("images must be [2B, C, H, W]")
    };
    assert_eq!(n, 2 * same.len(), "2B images for B pairs");

    let model = SiameseModel::new(ModelConfig {
        hyper: Default::default(),
        classes: 0,
        tower: tower.parse()?,
        input: [c, h, w],
        loss: LossKind::Contrastive,
        margin: 1.0,
        distance: Distance::Euclidean,
        normalize: false,
        freeze: Vec::new(),
    })?;
    let mut values = ModelValues::init(&model, 0);
    println!("{}", init_from(weights, &model, &mut values, false)?);

    let gpu = Gpu::new()?;
    let tensors = ModelTensors::upload(&gpu, &model, &values)?;
    let grads = gpu.zeros(&[model.layout.len], DType::F32)?;
    let labels: Vec<PairLabel> = same
        .iter()
        .map(|&s| match s > 0.5 {
            true => PairLabel::Same,
            false => PairLabel::Different,
        })
        .collect();
    let labels = PairLabel::upload(&gpu, &labels)?;
    // The dropout masks (if any) of step 0 of seed 0; PyTorch draws others, so compare
    // towers without dropout.
    let rng = gpu.upload_u32(&[0, 0], &[2])?;
    let mut tape = Tape::new(&gpu);
    let x = tape.input(gpu.upload_f32(&images, &shape)?);
    let train = Weights {
        grads: Some(&grads),
        rng: Some(&rng),
        mode: Mode::Train,
        ..tensors.eval()
    };
    let loss = model.record_loss(&mut tape, x, &labels, &train)?;
    let backward = tape.backward(loss)?;
    let kernels: Vec<_> = tape.forward_kernels().chain(backward.iter()).collect();
    gpu.run(&kernels);
    let loss = gpu.read_f32(tape.tensor(loss))?[0];
    println!("loss {loss}");

    let after = tensors.read(&gpu, values.batches_tracked + 1)?;
    let written = ModelValues {
        params: gpu.read_f32(&grads)?,
        ..after
    };
    let metadata = HashMap::from([("step_loss".to_string(), loss.to_string())]);
    save_weights(out, &model, &written, metadata)?;
    println!(
        "wrote the gradients and running statistics to {}",
        out.display()
    );
    Ok(())
}
