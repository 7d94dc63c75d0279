//! safetensors checkpoints: PyTorch names and shapes, a lossless round trip, and a clear
//! refusal of a checkpoint written for another architecture.

use std::collections::HashMap;
use std::path::PathBuf;

use siamese_gpu::checkpoint::{load_weights, save_weights};
use siamese_gpu::model::{ModelConfig, SiameseModel};
use siamese_gpu::nn::spec::REFERENCE_TOWER;
use siamese_gpu::vocab::Distance;
use siamese_gpu::vocab::LossKind;

fn model(tower: &str, loss: LossKind) -> SiameseModel {
    SiameseModel::new(ModelConfig {
        tower: tower.parse().unwrap(),
        input: [1, 28, 28],
        loss,
        margin: 1.0,
        distance: Distance::Euclidean,
        normalize: false,
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
    let flat = m.layout.init(5);
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
    save_weights(&path, &small, &small.layout.init(0), HashMap::new()).unwrap();
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
    save_weights(&path, &m, &m.layout.init(1), HashMap::new()).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A parameter vector of the wrong length is refused before anything is written.
    assert!(save_weights(&path, &m, &[0.0; 3], HashMap::new()).is_err());
    // The temporary file cannot be created when its name is taken by a directory.
    std::fs::create_dir_all(path.with_extension("safetensors.tmp")).unwrap();
    assert!(save_weights(&path, &m, &m.layout.init(2), HashMap::new()).is_err());
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
        distance: Distance::Cosine,
        normalize: true,
        ..m.config
    })
    .unwrap();
    let flat = m.layout.init(9);
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
