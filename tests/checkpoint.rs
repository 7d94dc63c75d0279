//! safetensors checkpoints: PyTorch names and shapes, a lossless round trip, and a clear
//! refusal of a checkpoint written for another architecture.

use std::collections::HashMap;
use std::path::PathBuf;

use siamese_gpu::checkpoint::{load_weights, save_weights};
use siamese_gpu::model::{ModelConfig, ModelValues, SiameseModel};
use siamese_gpu::nn::spec::REFERENCE_TOWER;
use siamese_gpu::vocab::Distance;
use siamese_gpu::vocab::LossKind;

fn model(tower: &str, loss: LossKind) -> SiameseModel {
    SiameseModel::new(ModelConfig {
        hyper: Default::default(),
        classes: 0,
        tower: tower.parse().unwrap(),
        input: [1, 28, 28],
        loss,
        margin: 1.0,
        distance: Distance::Euclidean,
        normalize: false,
        freeze: Vec::new(),
    })
    .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("siamese-checkpoint-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn weights_round_trip_under_pytorch_names_and_shapes() {
    let m = model(REFERENCE_TOWER, LossKind::Bce);
    let flat = ModelValues::init(&m, 5);
    let path = temp_dir("round-trip").join("model.safetensors");
    save_weights(
        &path,
        &m,
        &flat,
        HashMap::from([("seed".into(), "5".into())]),
    )
    .unwrap();
    assert_eq!(
        load_weights(&path, &m).unwrap(),
        flat,
        "the round trip must be exact"
    );

    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = file
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("head.bias".to_string(), vec![1]),
            ("head.weight".to_string(), vec![1, 128]),
            ("tower.0.bias".to_string(), vec![32]),
            ("tower.0.weight".to_string(), vec![32, 1, 5, 5]),
            ("tower.3.bias".to_string(), vec![64]),
            ("tower.3.weight".to_string(), vec![64, 32, 3, 3]),
            ("tower.7.bias".to_string(), vec![128]),
            ("tower.7.weight".to_string(), vec![128, 1600]),
        ]
    );
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["tower"], REFERENCE_TOWER);
    assert_eq!(meta["input"], "1,28,28");
    assert_eq!(meta["seed"], "5");
}

#[test]
fn a_checkpoint_of_another_architecture_says_what_differs() {
    let small = model(
        "conv 8 5 | relu | maxpool 2 | flatten | dense 16",
        LossKind::Contrastive,
    );
    let path = temp_dir("mismatch").join("model.safetensors");
    save_weights(&path, &small, &ModelValues::init(&small, 0), HashMap::new()).unwrap();
    let err = load_weights(&path, &model(REFERENCE_TOWER, LossKind::Contrastive))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tower.0.weight is F32 [8, 1, 5, 5], the model needs F32 [32, 1, 5, 5]"),
        "{err}"
    );
    assert!(
        err.contains("tower.7.weight [128, 1600] is missing"),
        "{err}"
    );
    assert!(
        err.contains("tower.4.weight is not part of this model"),
        "{err}"
    );
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint_intact() {
    let m = model("conv 4 3 | flatten | dense 8", LossKind::Contrastive);
    let dir = temp_dir("intact");
    let path = dir.join("model.safetensors");
    save_weights(&path, &m, &ModelValues::init(&m, 1), HashMap::new()).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A parameter vector of the wrong length is refused before anything is written.
    let short = ModelValues {
        params: vec![0.0; 3],
        ..ModelValues::init(&m, 1)
    };
    assert!(save_weights(&path, &m, &short, HashMap::new()).is_err());
    // The temporary file cannot be created when its name is taken by a directory.
    std::fs::create_dir_all(path.with_extension("safetensors.tmp")).unwrap();
    assert!(save_weights(&path, &m, &ModelValues::init(&m, 2), HashMap::new()).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_model_is_rebuilt_from_its_checkpoint() {
    let mut m = model(
        "conv 8 3 pad=1 | tanh | avgpool 2 | flatten | dense 12 | l2norm",
        LossKind::Triplet,
    );
    m.config.margin = 0.2;
    let m = SiameseModel::new(ModelConfig {
        hyper: Default::default(),
        classes: 0,
        distance: Distance::Cosine,
        normalize: true,
        ..m.config
    })
    .unwrap();
    let flat = ModelValues::init(&m, 9);
    let path = temp_dir("rebuild").join("model.safetensors");
    save_weights(
        &path,
        &m,
        &flat,
        HashMap::from([("pixel_scale".into(), "2".into())]),
    )
    .unwrap();
    let (loaded, params, meta) = siamese_gpu::checkpoint::load_model(&path).unwrap();
    assert_eq!(loaded.config, m.config);
    assert_eq!(params, flat);
    assert_eq!(meta["pixel_scale"], "2");
    // A safetensors file without our metadata is refused with what is missing.
    let foreign = temp_dir("rebuild").join("foreign.safetensors");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap();
    std::fs::write(
        &foreign,
        safetensors::serialize([("x", view)], None).unwrap(),
    )
    .unwrap();
    let err = siamese_gpu::checkpoint::load_model(&foreign)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no `input` in its metadata"), "{err}");
}

#[test]
fn batch_norm_running_statistics_are_saved_as_pytorch_buffers() {
    let m = model(
        "conv 4 3 bias=false | bn | relu | flatten | dense 6 | bn",
        LossKind::Contrastive,
    );
    let mut values = ModelValues::init(&m, 3);
    // Statistics a few steps of training would have left: distinct values, to catch a swap
    // (the padding between tensors stays zero, as the layout keeps it).
    for p in &m.tower.state.params {
        for (i, v) in values.running[p.offset..p.offset + p.len()]
            .iter_mut()
            .enumerate()
        {
            *v = 0.25 + (p.offset + i) as f32 / 8.0;
        }
    }
    values.batches_tracked = 17;
    let path = temp_dir("batch-norm").join("model.safetensors");
    save_weights(&path, &m, &values, HashMap::new()).unwrap();
    assert_eq!(load_weights(&path, &m).unwrap(), values, "exact round trip");

    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, safetensors::Dtype, Vec<usize>)> = file
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    use safetensors::Dtype::{F32, I64};
    let expected: Vec<(String, safetensors::Dtype, Vec<usize>)> = [
        ("tower.0.weight", F32, vec![4, 1, 3, 3]),
        ("tower.1.bias", F32, vec![4]),
        ("tower.1.num_batches_tracked", I64, vec![]),
        ("tower.1.running_mean", F32, vec![4]),
        ("tower.1.running_var", F32, vec![4]),
        ("tower.1.weight", F32, vec![4]),
        ("tower.4.bias", F32, vec![6]),
        ("tower.4.weight", F32, vec![6, 2704]),
        ("tower.5.bias", F32, vec![6]),
        ("tower.5.num_batches_tracked", I64, vec![]),
        ("tower.5.running_mean", F32, vec![6]),
        ("tower.5.running_var", F32, vec![6]),
        ("tower.5.weight", F32, vec![6]),
    ]
    .into_iter()
    .map(|(n, d, s)| (n.to_string(), d, s))
    .collect();
    assert_eq!(names, expected);
    let tracked = file.tensor("tower.1.num_batches_tracked").unwrap();
    assert_eq!(tracked.data(), 17i64.to_le_bytes());
    // BatchNorm starts as PyTorch's: weight 1, bias 0, running mean 0, running variance 1.
    let fresh = ModelValues::init(&m, 0);
    let layer = |name: &str| {
        let p = &m.layout.params[m.layout.index_of(name).unwrap()];
        fresh.params[p.offset..p.offset + p.len()].to_vec()
    };
    assert_eq!(layer("tower.1.weight"), vec![1.0; 4]);
    assert_eq!(layer("tower.1.bias"), vec![0.0; 4]);
    let state = &m.tower.state;
    let stats: Vec<(&str, Vec<f32>)> = state
        .params
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                fresh.running[p.offset..p.offset + p.len()].to_vec(),
            )
        })
        .collect();
    assert_eq!(
        stats,
        vec![
            ("tower.1.running_mean", vec![0.0; 4]),
            ("tower.1.running_var", vec![1.0; 4]),
            ("tower.5.running_mean", vec![0.0; 6]),
            ("tower.5.running_var", vec![1.0; 6]),
        ]
    );
}
