//! The doctor on real runs: each classic failure, crafted on Fashion-MNIST, gets its finding,
//! and healthy runs (the reference recipe, ArcFace, ProxyAnchor, SupCon) get none of them.
//! Runs are small (a few dozen steps, 1,000 evaluation pairs) so the file takes about five
//! minutes on lavapipe.

mod support;

use std::path::Path;

use siamese_gpu::Gpu;
use siamese_gpu::data::dataset::DEFAULT_DATA_DIR;
use siamese_gpu::data::idx;
use siamese_gpu::eval::doctor::{Diagnosis, Severity};
use siamese_gpu::train::{self, Outcome, RunControl, TrainConfig};
use siamese_gpu::vocab::{Distance, LossKind};
use support::TempDir;

const IDS: [&str; 14] = [
    "embedding_collapse",
    "dead_relu",
    "vanishing_gradient",
    "exploding_gradient",
    "margin_too_small",
    "margin_too_large",
    "inverted_labels",
    "chance_accuracy",
    "overfitting",
    "pair_imbalance",
    "scale_too_small",
    "temperature_too_low",
    "class_centers_collapsed",
    "xbm_stale",
];

fn data_present() -> bool {
    let present = Path::new(DEFAULT_DATA_DIR)
        .join("train-images-idx3-ubyte.gz")
        .exists();
    if !present {
        eprintln!(
            "Fashion-MNIST not found: apt-get install dataset-fashion-mnist to run this test"
        );
    }
    present
}

/// A short run with small evaluation sets.
fn small(pairs: usize) -> TrainConfig {
    TrainConfig {
        data: Some(DEFAULT_DATA_DIR.into()),
        pairs,
        val_images: Some(1000),
        val_pairs: 1000,
        test_pairs: 1000,
        train_eval_pairs: 1000,
        doctor_images: 1000,
        pixel_baseline: false,
        eval_every: pairs,
        ..TrainConfig::default()
    }
}

/// A short run of a loss on class-labelled batches (P×K batches of 128 images).
fn small_class_loss(loss: LossKind, images: usize) -> TrainConfig {
    TrainConfig {
        loss,
        margin: loss.default_margin(),
        distance: Distance::Cosine,
        ..small(images)
    }
}

/// The diagnosis of a run, finished or diverged.
fn diagnose(cfg: &TrainConfig) -> Diagnosis {
    diagnose_with(cfg, RunControl::default())
}

fn diagnose_with(cfg: &TrainConfig, control: RunControl) -> Diagnosis {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    let diagnosis = match train::train_with(&gpu, cfg, control, &mut |_| ()) {
        Ok(Outcome::Trained(report)) => report.diagnosis,
        Ok(Outcome::Diverged(divergence)) => divergence.diagnosis,
        Ok(stopped) => panic!("{stopped}"),
        Err(e) => panic!("{e}"),
    };
    let e = &diagnosis.evidence;
    eprintln!(
        "val accuracy {:.3}, AUC {:.3}; embeddings {:?}\n{diagnosis}",
        e.val_accuracy,
        e.val_roc_auc,
        e.embeddings
            .as_ref()
            .map(|s| (s.mean_pairwise_distance, s.mean_norm, s.effective_rank))
    );
    diagnosis
}

fn has(d: &Diagnosis, id: &str, at_least: Severity) -> bool {
    d.findings
        .iter()
        .any(|f| f.id == id && f.severity >= at_least)
}

#[track_caller]
fn assert_finds(d: &Diagnosis, id: &str, at_least: Severity) {
    assert!(
        has(d, id, at_least),
        "expected `{id}` at {at_least} or worse; found:\n{d}"
    );
}

#[test]
fn a_healthy_run_reports_nothing() {
    if !data_present() {
        return;
    }
    let d = diagnose(&small(3072));
    assert!(!d.failed(), "a healthy run reported a failure:\n{d}");
    for id in IDS {
        assert!(
            !has(&d, id, Severity::Info),
            "healthy run reported `{id}`:\n{d}"
        );
    }
}

#[test]
fn labels_swapped_in_the_loss_are_inverted_labels() {
    if !data_present() {
        return;
    }
    // The Keras head (|a − b| → logit, BCE) taught that Same is 0 and Different 1.
    let d = diagnose(&TrainConfig {
        loss: siamese_gpu::vocab::LossKind::Bce,
        invert_pair_labels: true,
        ..small(2048)
    });
    assert_finds(&d, "inverted_labels", Severity::Fail);
}

#[test]
fn margin_zero_is_too_small_and_collapses_the_embedding() {
    if !data_present() {
        return;
    }
    let d = diagnose(&TrainConfig {
        margin: 0.0,
        ..small(2048)
    });
    assert_finds(&d, "margin_too_small", Severity::Fail);
    assert_finds(&d, "embedding_collapse", Severity::Warn);
}

#[test]
fn a_margin_beyond_any_distance_is_too_large() {
    if !data_present() {
        return;
    }
    let d = diagnose(&TrainConfig {
        normalize: true,
        margin: 3.0,
        ..small(2048)
    });
    assert_finds(&d, "margin_too_large", Severity::Fail);
}

#[test]
fn learning_rate_ten_explodes() {
    if !data_present() {
        return;
    }
    let mut cfg = small(2048);
    cfg.optimizer.lr = 10.0;
    assert_finds(&diagnose(&cfg), "exploding_gradient", Severity::Fail);
}

#[test]
fn a_tower_ending_in_a_relu_dies_and_passes_no_gradient() {
    if !data_present() {
        return;
    }
    let mut cfg = TrainConfig {
        tower: "conv 32 5 | relu | maxpool 2 | conv 64 3 | relu | maxpool 2 | flatten | dense 128 | relu"
            .parse()
            .unwrap(),
        ..small(2048)
    };
    cfg.optimizer.lr = 0.05;
    let d = diagnose(&cfg);
    assert_finds(&d, "dead_relu", Severity::Fail);
    assert_finds(&d, "vanishing_gradient", Severity::Fail);
    // Every ReLU is probed, those fused into the max-pooling after a convolution included.
    let probed: Vec<&str> = d.evidence.relu.iter().map(|r| r.layer.as_str()).collect();
    assert_eq!(
        probed,
        [
            "the ReLU after conv 1",
            "the ReLU after conv 2",
            "the ReLU after dense 1"
        ]
    );
}

#[test]
fn labels_shuffled_against_their_images_give_chance_accuracy() {
    if !data_present() {
        return;
    }
    // A copy of the dataset whose training labels are shuffled: images and labels out of step.
    let dir = TempDir::new("doctor-shuffled");
    let src = Path::new(DEFAULT_DATA_DIR);
    for name in [
        "train-images-idx3-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    let labels = idx::read_idx(&src.join("train-labels-idx1-ubyte.gz")).unwrap();
    let mut shuffled = labels.data.clone();
    // A fixed permutation (multiplication by a unit mod n): far from the identity everywhere.
    let n = shuffled.len();
    for (i, l) in shuffled.iter_mut().enumerate() {
        *l = labels.data[(i * 7919 + 13) % n];
    }
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        idx::encode_idx(&[n], &shuffled).unwrap(),
    )
    .unwrap();
    let d = diagnose(&TrainConfig {
        data: Some(dir.path().to_path_buf()),
        ..small(2048)
    });
    assert_finds(&d, "chance_accuracy", Severity::Fail);
}

#[test]
fn almost_only_different_pairs_are_an_imbalance() {
    if !data_present() {
        return;
    }
    let d = diagnose(&TrainConfig {
        positive_fraction: 0.02,
        ..small(2048)
    });
    assert_finds(&d, "pair_imbalance", Severity::Fail);
}

#[test]
fn a_hundred_training_images_overfit() {
    if !data_present() {
        return;
    }
    let d = diagnose(&TrainConfig {
        val_images: Some(59_900),
        ..small(6144)
    });
    assert_finds(&d, "overfitting", Severity::Warn);
}

const BN_TOWER: &str = "conv 8 5 bias=false | bn | relu | maxpool 2 | flatten | dense 32";

/// Two pairs a step: BatchNorm's statistics over four images.
#[test]
fn batch_norm_over_a_tiny_batch_is_named() {
    if !data_present() {
        return;
    }
    let d = diagnose(&TrainConfig {
        tower: BN_TOWER.parse().unwrap(),
        batch: 2,
        ..small(64)
    });
    assert_finds(&d, "batchnorm_small_batch", Severity::Warn);
    assert!(
        d.findings
            .iter()
            .any(|f| f.id == "batchnorm_small_batch" && f.message.contains("over 4 images")),
        "{d}"
    );
}

/// Four steps: the running variance has moved a third of the way from its initial 1 to the
/// convolution's output variance, so evaluation normalises with statistics far from the
/// data's.
#[test]
fn running_statistics_far_from_the_data_are_drift() {
    if !data_present() {
        return;
    }
    let d = diagnose(&TrainConfig {
        tower: BN_TOWER.parse().unwrap(),
        ..small(512)
    });
    assert_finds(&d, "batchnorm_drift", Severity::Warn);
    assert!(!has(&d, "batchnorm_small_batch", Severity::Info), "{d}");
}

/// ArcFace, ProxyAnchor and SupCon at their defaults: none of the findings, the class
/// losses' own included.
#[test]
fn healthy_class_losses_report_nothing() {
    if !data_present() {
        return;
    }
    for loss in [LossKind::ArcFace, LossKind::ProxyAnchor, LossKind::SupCon] {
        let d = diagnose(&small_class_loss(loss, 2048));
        assert!(!d.failed(), "a healthy {loss} run reported a failure:\n{d}");
        for id in IDS.iter().chain(&["margin_too_large"]) {
            assert!(
                !has(&d, id, Severity::Info),
                "healthy {loss} run reported `{id}`:\n{d}"
            );
        }
        if loss != LossKind::SupCon {
            let spread = d.evidence.class_centers.expect("a class head's spread");
            assert!(spread.max_cos < 0.9, "{loss}: {spread:?}");
        }
    }
}

#[test]
fn an_arcface_margin_of_pi_over_two_cannot_be_met() {
    if !data_present() {
        return;
    }
    let d = diagnose(&TrainConfig {
        margin: 1.6,
        ..small_class_loss(LossKind::ArcFace, 512)
    });
    assert_finds(&d, "margin_too_large", Severity::Fail);
}

/// s = 1 over ten classes: the right class gets at most p ≈ 0.24 from the softmax.
#[test]
fn an_arcface_scale_of_one_is_too_small() {
    if !data_present() {
        return;
    }
    let mut cfg = small_class_loss(LossKind::ArcFace, 512);
    cfg.hyper.scale = 1.0;
    let d = diagnose(&cfg);
    assert_finds(&d, "scale_too_small", Severity::Warn);
}

#[test]
fn a_supcon_temperature_of_a_hundredth_is_too_low() {
    if !data_present() {
        return;
    }
    let mut cfg = small_class_loss(LossKind::SupCon, 512);
    cfg.hyper.temperature = Some(0.01);
    let d = diagnose(&cfg);
    assert_finds(&d, "temperature_too_low", Severity::Warn);
}

/// Proxies started on one direction, with a head learning rate too small to move them
/// apart: the proxies stay collapsed.
#[test]
fn proxies_on_one_direction_have_collapsed() {
    if !data_present() {
        return;
    }
    let cfg = TrainConfig {
        head_lr: Some(1e-9),
        ..small_class_loss(LossKind::ProxyAnchor, 512)
    };
    let collapse = |model: &siamese_gpu::model::SiameseModel,
                    values: &mut siamese_gpu::model::ModelValues| {
        let from = model.class_head_offset().expect("proxies");
        let dim = model.embedding_dim();
        let first: Vec<f32> = values.params[from..from + dim].to_vec();
        for row in values.params[from..].chunks_exact_mut(dim) {
            row.copy_from_slice(&first);
        }
        Ok("every proxy set to the first".to_string())
    };
    let d = diagnose_with(
        &cfg,
        RunControl {
            init: Some(&collapse),
            ..Default::default()
        },
    );
    assert_finds(&d, "class_centers_collapsed", Severity::Fail);
}

/// A memory of eight batches under a learning rate of 1e-2: by the end the tower embeds the
/// images it holds far from where the memory has them. Against a memory of two batches at
/// 1e-4, which stays fresh.
#[test]
fn a_memory_spanning_a_fast_moving_tower_is_stale() {
    if !data_present() {
        return;
    }
    let mut stale = TrainConfig {
        xbm: Some(train::Xbm {
            slots: 1024,
            warmup: 0,
        }),
        ..small_class_loss(LossKind::SupCon, 1024)
    };
    stale.optimizer.lr = 1e-2;
    let d = diagnose(&stale);
    assert_finds(&d, "xbm_stale", Severity::Warn);
    let mut fresh = TrainConfig {
        xbm: Some(train::Xbm {
            slots: 256,
            warmup: 0,
        }),
        ..small_class_loss(LossKind::SupCon, 1024)
    };
    fresh.optimizer.lr = 1e-4;
    let d = diagnose(&fresh);
    let drift = d.evidence.memory_drift.expect("a memory's drift");
    assert!(!has(&d, "xbm_stale", Severity::Info), "{drift:?}\n{d}");
}
