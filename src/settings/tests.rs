//! Tests of the run settings: parsing, layering a file under flags, resolving each key.

use super::*;

#[test]
fn settings_read_back_from_their_toml_and_their_fingerprint() {
    let mut s = RunSettings {
        held_out_classes: vec!["7".into(), "8".into()],
        image_size: Some("32x24".into()),
        ..RunSettings::default()
    };
    s.set("lr", "3e-4").unwrap();
    s.set("loss", "triplet").unwrap();
    assert_eq!(toml::from_str::<RunSettings>(&s.to_toml()).unwrap(), s);
    let back = RunSettings::from_fingerprint(&s.fingerprint()).unwrap();
    assert_eq!(
        back,
        RunSettings {
            pairs: RunSettings::default().pairs,
            ..s.clone()
        }
    );
    let cfg = s.to_train_config().unwrap();
    assert_eq!(cfg.dataset.image_size, Some([32, 24]));
    assert_eq!(cfg.optimizer.lr, 3e-4);
    assert_eq!(
        RunSettings::default().differences(&s),
        [
            "held_out_classes: (unset) → [\"7\",\"8\"]",
            "image_size: (unset) → \"32x24\"",
            "loss: \"contrastive\" → \"triplet\"",
            "lr: 0.001 → 0.0003",
        ]
    );
}

#[test]
fn augmentation_keys_reach_the_engine_and_are_off_by_default() {
    use crate::vocab::FillMode;
    assert!(
        RunSettings::default()
            .to_train_config()
            .unwrap()
            .augment
            .is_off()
    );
    let mut s = RunSettings::default();
    for (key, value) in [
        ("rotation_range", "10"),
        ("zoom_range", "0.2"),
        ("horizontal_flip", "true"),
        ("fill_mode", "constant"),
    ] {
        s.set(key, value).unwrap();
    }
    assert_eq!(
        s.to_train_config().unwrap().augment,
        Augment {
            rotation_range: 10.0,
            zoom_range: 0.2,
            horizontal_flip: true,
            fill_mode: FillMode::Constant,
            ..Augment::default()
        }
    );
    s.set("random_resized_crop", "true").unwrap();
    assert_eq!(
        s.to_train_config().unwrap().augment.crop,
        Some(CropRange::TORCHVISION)
    );
    s.set("hue", "0.1").unwrap();
    s.set("random_grayscale", "0.2").unwrap();
    let color = s.to_train_config().unwrap().augment.color;
    assert_eq!(
        (color.hue, color.grayscale, color.brightness),
        (0.1, 0.2, 0.0)
    );
    assert!(!s.to_toml().contains("brightness") && s.to_toml().contains("hue = 0.1"));
    s.set("gaussian_blur", "5").unwrap();
    assert_eq!(
        s.to_train_config().unwrap().augment.blur,
        Some(Blur {
            taps: 5,
            sigma: Blur::SIGMA
        })
    );
    s.set("crop_scale", "0.5:0.9").unwrap();
    assert_eq!(
        s.to_train_config().unwrap().augment.crop.unwrap().scale,
        (0.5, 0.9)
    );
}

#[test]
fn values_out_of_range_are_refused_naming_the_key() {
    let refused = |key: &str, value: &str| {
        let mut s = RunSettings::default();
        match s.set(key, value) {
            Err(e) => e.to_string(),
            Ok(()) => s.to_train_config().unwrap_err().to_string(),
        }
    };
    assert!(refused("image_size", "0x4").contains("image_size: `0x4` is not a size"));
    assert!(refused("color", "cmyk").contains("color: unknown colour `cmyk`"));
    assert!(refused("gpu_data_budget", "12X").contains("`12X` is not a size in bytes"));
    let crop = |key: &str, value: &str| {
        let mut s = RunSettings::default();
        s.set("random_resized_crop", "true").unwrap();
        s.set(key, value).unwrap();
        s.to_train_config().unwrap_err().to_string()
    };
    assert!(crop("crop_scale", "0.5").contains("crop_scale: `0.5` is not LO:HI"));
    assert!(refused("hue", "0.7").contains("hue must be in [0, 0.5]"));
    assert!(refused("gaussian_blur", "4").contains("gaussian_blur must be an odd kernel size"));
    assert!(refused("contrast", "-1").contains("contrast must be a finite number ≥ 0"));
    assert!(refused("random_grayscale", "2").contains("random_grayscale must be a probability"));
    assert!(crop("crop_scale", "0:1").contains("crop_scale must be LO:HI with 0 < LO"));
    assert!(crop("crop_ratio", "2:1").contains("crop_ratio must be LO:HI with 0 < LO ≤ HI"));
    assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
    assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_bytes("1000").unwrap(), 1000);
    assert!(refused("on_bad_image", "ignore").contains("on_bad_image: unknown policy"));
    assert!(
        refused("resize", "crop").contains(
            "resize: unknown policy `crop`: use stretch, shorter-side+center-crop or pad"
        )
    );
    assert!(refused("embedding_dim", "0").contains("embedding_dim must be at least 1"));
    assert!(refused("weight_decay", "-1").contains("weight_decay must be a finite number ≥ 0"));
    assert!(refused("pixel_norm", "standard:0.5:0").contains("pixel_norm:"));
    assert!(refused("seed", "-1").starts_with("seed = -1"));
    assert!(refused("zoom_range", "1").contains("zoom_range must be in [0, 1)"));
    assert!(refused("fill_mode", "wrap").contains("fill_mode: unknown fill mode `wrap`"));
    assert!(refused("miner", "hardest").contains("unknown miner `hardest`"));
    assert!(refused("precision", "f16").contains("precision: unknown precision `f16`"));
}

#[test]
fn the_cache_dir_is_a_directory_or_off_and_not_part_of_the_fingerprint() {
    let with = |dir: &str| RunSettings {
        cache_dir: Some(dir.into()),
        ..RunSettings::default()
    };
    let options = |s: RunSettings| s.data_options().unwrap().cache_dir;
    assert_eq!(options(with("/tmp/c")), Some(PathBuf::from("/tmp/c")));
    assert_eq!(options(with("off")), None);
    assert!(with("/tmp/c").to_toml().contains("cache_dir = \"/tmp/c\""));
    assert_eq!(
        with("/tmp/c").fingerprint(),
        RunSettings::default().fingerprint(),
        "a run resumes whatever its cache directory"
    );
}

#[test]
fn precision_reads_from_toml_and_f32_is_not_written() {
    let s: RunSettings = toml::from_str("precision = \"mixed\"").unwrap();
    assert_eq!(s.to_train_config().unwrap().precision, Precision::Mixed);
    assert!(s.to_toml().contains("precision = \"mixed\""));
    assert!(!RunSettings::default().to_toml().contains("precision"));
}

#[test]
fn a_miner_reads_from_toml() {
    let s: RunSettings = toml::from_str(
        "loss = \"triplet\"\nminer = \"semi-hard\"\nclasses_per_batch = 8\nbatch = 64",
    )
    .unwrap();
    let cfg = s.to_train_config().unwrap();
    assert_eq!(cfg.miner, Some(crate::vocab::Miner::SemiHard));
    assert_eq!(cfg.classes_per_batch, Some(8));
    assert_eq!(toml::from_str::<RunSettings>(&s.to_toml()).unwrap(), s);
    assert!(!RunSettings::default().to_toml().contains("miner"));
}

#[test]
fn the_defaults_are_the_engines_reference_recipe() {
    // But for where decoded image folders are cached: the command line caches them in
    // the user's cache directory by default, the library only where it is told to.
    let mut cli = RunSettings::default().to_train_config().unwrap();
    #[cfg(feature = "images")]
    assert_eq!(
        cli.dataset.cache_dir,
        crate::data::folder_cache::default_dir()
    );
    cli.dataset.cache_dir = None;
    assert_eq!(cli, TrainConfig::default());
}

/// Flags typed on a command line, parsed as `train` parses them.
fn typed(words: &[&str]) -> (RunSettings, ArgMatches) {
    let command = RunSettings::augment_args(clap::Command::new("train"));
    let matches = command
        .try_get_matches_from(std::iter::once("train").chain(words.iter().copied()))
        .unwrap();
    (RunSettings::from_arg_matches(&matches).unwrap(), matches)
}

#[test]
fn a_typed_flag_overrides_the_file_and_an_untyped_one_keeps_it() {
    let file: RunSettings = toml::from_str(
        "lr = 3e-4\nmargin = 0.5\nloss = \"triplet\"\nminer = \"semi-hard\"\nprecision = \"mixed\"\nheld_out_classes = [\"7\"]",
    )
    .unwrap();
    let (flags, matches) = typed(&["--margin", "2", "--batch", "64", "--embedding-dim", "32"]);
    let s = file.with_flags(&flags, &matches).unwrap();
    assert_eq!(
        (s.margin, s.batch, s.embedding_dim),
        (Some(2.0), 64, Some(32))
    );
    assert_eq!(
        (s.lr, s.loss.as_str()),
        (3e-4, "triplet"),
        "untyped: the file's"
    );
    assert_eq!(s.held_out_classes, ["7"]);
    // A typed value the settings leave unwritten (the default) still undoes the file's.
    let (flags, matches) = typed(&["--miner", "none", "--precision", "f32"]);
    let s = file.with_flags(&flags, &matches).unwrap();
    assert_eq!((s.miner.as_str(), s.precision.as_str()), ("none", "f32"));
    assert_eq!(s.margin, Some(0.5));
}

/// Each loss on class-labelled batches resolves its own defaults (PML's), distance cosine
/// and P×K batches; a hyper-parameter it has no use for is refused, naming its users.
#[test]
fn the_class_losses_resolve_their_hyper_parameters() {
    use crate::vocab::{MarginKind, SimilarityLoss};
    let config = |pairs: &[(&str, &str)]| {
        let mut s = RunSettings::default();
        for (k, v) in pairs {
            s.set(k, v).unwrap();
        }
        s.to_train_config()
    };
    let arc = config(&[("loss", "arcface")]).unwrap();
    assert_eq!(arc.distance, Distance::Cosine);
    assert_eq!(
        arc.model_config([1, 28, 28], 10).similarity(),
        Some(SimilarityLoss::MarginSoftmax {
            margin: MarginKind::Angular(0.5),
            scale: 64.0,
            sub_centers: 1
        })
    );
    let ms = config(&[("loss", "multi-similarity"), ("alpha", "3")]).unwrap();
    assert_eq!(
        ms.model_config([1, 28, 28], 10).similarity(),
        Some(SimilarityLoss::MultiSimilarity {
            alpha: 3.0,
            beta: 50.0,
            base: 0.5,
            epsilon: 0.1
        })
    );
    let proxy = config(&[("loss", "proxy-anchor")]).unwrap();
    assert_eq!(
        proxy.model_config([1, 28, 28], 10).similarity(),
        Some(SimilarityLoss::ProxyAnchor {
            alpha: 32.0,
            margin: 0.1
        })
    );
    let err = |pairs: &[(&str, &str)]| config(pairs).unwrap_err().to_string();
    assert!(
        err(&[("loss", "arcface"), ("temperature", "0.1")]).contains(
            "temperature is a hyper-parameter of the supcon and ntxent loss, not of arcface"
        )
    );
    assert!(
        err(&[("loss", "supcon"), ("margin", "0.2")]).contains("the supcon loss has no margin")
    );
    assert!(
        err(&[("loss", "cosface"), ("distance", "euclidean")]).contains("use distance = cosine")
    );
    assert!(err(&[("loss", "arcface"), ("xbm", "1024")]).contains("not arcface"));
    assert!(
        err(&[("loss", "supcon"), ("xbm", "64")])
            .contains("xbm = 64 slots cannot hold a batch of 128")
    );
    assert!(err(&[("xbm_warmup", "10")]).contains("give --xbm SIZE too"));
    assert!(err(&[("loss", "supcon"), ("scale", "0")]).contains("scale is a hyper-parameter"));
    assert!(
        err(&[("loss", "arcface"), ("scale", "-1")]).contains("scale must be a positive number")
    );
    let l1 = config(&[("distance", "l1")]).unwrap();
    assert_eq!(l1.distance, Distance::L1);
}
