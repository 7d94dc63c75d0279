//! The host-side data path: IDX reading (raw and gzip'd, and every way a file can be
//! broken), dataset discovery and the validation split, and the pair / triplet samplers'
//! distributions against the PyTorch reference's `sample_pairs`.
//!
//! Statistical checks use a fixed seed (so they are deterministic) and bounds that a
//! correct sampler would exceed with probability about 1e-5 or less (stated at each one);
//! the alternative they guard against misses the bound by orders of magnitude.

mod support;

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use siamese_gpu::Error;
use siamese_gpu::data::dataset::{DEFAULT_DATA_DIR, default_val, load, load_with, locate};
use siamese_gpu::data::idx::{encode_idx, parse_idx, read_idx};
use siamese_gpu::data::images::{DataOptions, ImageSet};
use siamese_gpu::data::sampler::{PairSampler, TripletSampler, balanced_pairs, try_balanced_pairs};
use siamese_gpu::vocab::PairLabel;
use support::TempDir;

// ---------------------------------------------------------------------------------------
// helpers

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn data_err<T: std::fmt::Debug>(r: siamese_gpu::Result<T>) -> String {
    match r {
        Err(Error::Data(msg)) => msg,
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

fn config_err<T: std::fmt::Debug>(r: siamese_gpu::Result<T>) -> String {
    match r {
        Err(Error::Config(msg)) => msg,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

fn assert_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
}

/// Writes a synthetic MNIST-layout dataset: image i of a set has every pixel equal to
/// `i as u8`, and label `i % 10`. `train_labels` may differ from `train` to break counts.
struct Synth {
    train: usize,
    train_labels: usize,
    test: usize,
    size: (usize, usize),
    test_size: (usize, usize),
    gz: bool,
}

impl Synth {
    fn ok(train: usize, test: usize) -> Synth {
        Synth {
            train,
            train_labels: train,
            test,
            size: (4, 3),
            test_size: (4, 3),
            gz: false,
        }
    }

    fn write(&self, dir: &Path) {
        let images = |n: usize, (h, w): (usize, usize)| -> Vec<u8> {
            (0..n).flat_map(|i| vec![i as u8; h * w]).collect()
        };
        let labels = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 10) as u8).collect() };
        let files = [
            (
                "train-images-idx3-ubyte",
                encode_idx(
                    &[self.train, self.size.0, self.size.1],
                    &images(self.train, self.size),
                ),
            ),
            (
                "train-labels-idx1-ubyte",
                encode_idx(&[self.train_labels], &labels(self.train_labels)),
            ),
            (
                "t10k-images-idx3-ubyte",
                encode_idx(
                    &[self.test, self.test_size.0, self.test_size.1],
                    &images(self.test, self.test_size),
                ),
            ),
            (
                "t10k-labels-idx1-ubyte",
                encode_idx(&[self.test], &labels(self.test)),
            ),
        ];
        for (name, bytes) in files {
            let bytes = bytes.unwrap();
            if self.gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}

/// Labels with class c holding (c + 1)·100 images, interleaved (not sorted by class), so
/// "uniform over images" and "uniform over classes" give very different class counts.
fn uneven_labels() -> Vec<u8> {
    let mut left: Vec<usize> = (0..10).map(|c| (c + 1) * 100).collect();
    let mut labels = Vec::new();
    while left.iter().any(|&n| n > 0) {
        for (c, n) in left.iter_mut().enumerate() {
            if *n > 0 {
                labels.push(c as u8);
                *n -= 1;
            }
        }
    }
    labels
}

/// Pearson's chi-square of observed counts against expected counts.
fn chi_square(observed: &[u64], expected: &[f64]) -> f64 {
    observed
        .iter()
        .zip(expected)
        .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
        .sum()
}

// ---------------------------------------------------------------------------------------
// IDX reading

#[test]
fn the_installed_fashion_mnist_files_read_with_their_known_shapes() {
    let dir = Path::new(DEFAULT_DATA_DIR);
    let path = dir.join("train-images-idx3-ubyte.gz");
    if !path.exists() {
        println!(
            "SKIPPED: {} is absent (apt-get install dataset-fashion-mnist)",
            path.display()
        );
        return;
    }
    let images = read_idx(&path).unwrap();
    assert_eq!(images.dims, vec![60000, 28, 28]);
    assert_eq!(images.data.len(), 60000 * 28 * 28);
    for (file, n) in [
        ("train-labels-idx1-ubyte.gz", 60000),
        ("t10k-labels-idx1-ubyte.gz", 10000),
    ] {
        let labels = read_idx(&dir.join(file)).unwrap();
        assert_eq!(labels.dims, vec![n], "{file}");
        let mut per_class = [0usize; 10];
        for &l in &labels.data {
            assert!(l < 10, "{file}: label {l} outside 0..10");
            per_class[l as usize] += 1;
        }
        // Fashion-MNIST is exactly balanced: n/10 images per class.
        assert!(
            per_class.iter().all(|&c| c == n / 10),
            "{file}: {per_class:?}"
        );
    }
    let test = read_idx(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(test.dims, vec![10000, 28, 28]);
}

#[test]
fn the_installed_dataset_loads_with_the_last_5000_training_images_as_validation() {
    let dir = Path::new(DEFAULT_DATA_DIR);
    if locate(Some(dir)).is_err() {
        println!("SKIPPED: no Fashion-MNIST under {DEFAULT_DATA_DIR}");
        return;
    }
    let ds = load(Some(dir), None).unwrap();
    assert_eq!(
        (ds.train.len(), ds.val.len(), ds.test.len()),
        (55000, 5000, 10000)
    );
    assert_eq!((ds.train.height, ds.train.width), (28, 28));
    assert_eq!(ds.train.num_classes(), 10);
    let raw_images = read_idx(&dir.join("train-images-idx3-ubyte.gz")).unwrap();
    let raw_labels = read_idx(&dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    let px = 28 * 28;
    assert_eq!(ds.val.images, raw_images.data[55000 * px..]);
    assert_eq!(ds.val.labels, raw_labels.data[55000..]);
    assert_eq!(ds.train.images, raw_images.data[..55000 * px]);
    assert_eq!(ds.train.labels, raw_labels.data[..55000]);
}

#[test]
fn synthetic_idx_files_round_trip_raw_and_gzipped_whatever_their_names() {
    let tmp = TempDir::new("roundtrip");
    let dims = [3usize, 2, 5];
    let data: Vec<u8> = (0..30u8).map(|v| v.wrapping_mul(37)).collect();
    let bytes = encode_idx(&dims, &data).unwrap();
    assert_eq!(&bytes[..4], &[0, 0, 0x08, 3]);
    // The gzip decision follows the magic bytes: a gzip'd file without .gz and a raw
    // file named .gz both read.
    let cases = [
        ("raw-idx3-ubyte", bytes.clone()),
        ("gz-idx3-ubyte.gz", gzip(&bytes)),
        ("gz-without-suffix", gzip(&bytes)),
        ("raw-named.gz", bytes.clone()),
    ];
    for (name, contents) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let arr = read_idx(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(arr.dims, dims, "{name}");
        assert_eq!(arr.data, data, "{name}");
    }
    // A 1-D label file too.
    let labels = parse_idx(&encode_idx(&[4], &[9, 0, 3, 1]).unwrap(), "l").unwrap();
    assert_eq!((labels.dims, labels.data), (vec![4], vec![9, 0, 3, 1]));
}

#[test]
fn a_corrupt_magic_number_is_named_as_not_idx() {
    let mut bytes = encode_idx(&[2, 2], &[1, 2, 3, 4]).unwrap();
    bytes[0] = 0x50;
    bytes[1] = 0x4b; // "PK": a zip archive, say
    let msg = data_err(parse_idx(&bytes, "weird.bin"));
    assert_mentions(&msg, &["weird.bin", "not an IDX file", "50 4b 08 02"]);
    let msg = data_err(parse_idx(&[0, 0], "tiny"));
    assert_mentions(&msg, &["tiny", "2 bytes", "truncated"]);
}

#[test]
fn a_type_code_other_than_unsigned_byte_is_refused_with_its_name() {
    let mut bytes = encode_idx(&[2], &[1, 2]).unwrap();
    bytes[2] = 0x0D;
    let msg = data_err(parse_idx(&bytes, "floats-idx1"));
    assert_mentions(&msg, &["floats-idx1", "32-bit float", "0x0d", "0x08"]);
    bytes[2] = 0x42;
    let msg = data_err(parse_idx(&bytes, "odd"));
    assert_mentions(&msg, &["odd", "0x42", "not an IDX type"]);
    bytes[2] = 0x08;
    bytes[3] = 0;
    let msg = data_err(parse_idx(&bytes, "nodims"));
    assert_mentions(&msg, &["nodims", "0 dimensions"]);
}

#[test]
fn a_truncated_payload_says_expected_and_found_bytes_and_how_to_fix_it() {
    let bytes = encode_idx(&[10, 4, 4], &[7; 160]).unwrap();
    let cut = &bytes[..bytes.len() - 33];
    let msg = data_err(parse_idx(cut, "train-images-idx3-ubyte"));
    assert_mentions(
        &msg,
        &[
            "train-images-idx3-ubyte",
            "160 bytes",
            "only 127 bytes",
            "truncated",
            "dataset-fashion-mnist",
        ],
    );
    // Cut inside the header's dimensions.
    let msg = data_err(parse_idx(&bytes[..9], "hdr"));
    assert_mentions(&msg, &["hdr", "3 dimensions", "truncated"]);
}

#[test]
fn trailing_bytes_after_the_declared_payload_are_an_error() {
    let mut bytes = encode_idx(&[3], &[1, 2, 3]).unwrap();
    bytes.extend_from_slice(&[0; 5]);
    let msg = data_err(parse_idx(&bytes, "labels-idx1"));
    assert_mentions(
        &msg,
        &["labels-idx1", "5 trailing bytes", "3 bytes of data"],
    );
}

#[test]
fn corrupt_and_truncated_gzip_files_are_named_with_what_happened() {
    let tmp = TempDir::new("gzip");
    let good = gzip(&encode_idx(&[100, 10], &[3; 1000]).unwrap());
    // Flip bytes inside the deflate stream: the decoder fails or the CRC check does.
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid - 2..mid + 2] {
        *b ^= 0xA5;
    }
    let path = tmp.path().join("broken.gz");
    std::fs::write(&path, &corrupt).unwrap();
    let msg = data_err(read_idx(&path));
    assert_mentions(&msg, &["broken.gz", "gzip", "dataset-fashion-mnist"]);

    let path = tmp.path().join("cut.gz");
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let msg = data_err(read_idx(&path));
    assert_mentions(&msg, &["cut.gz", "gzip", "truncated"]);

    let msg = data_err(read_idx(&tmp.path().join("absent-idx1-ubyte")));
    assert_mentions(&msg, &["absent-idx1-ubyte", "cannot read"]);
}

// ---------------------------------------------------------------------------------------
// datasets

#[test]
fn locate_on_an_empty_directory_gives_the_install_advice() {
    let tmp = TempDir::new("empty");
    let msg = data_err(locate(Some(tmp.path())));
    assert_mentions(
        &msg,
        &[
            &tmp.path().display().to_string(),
            "apt-get install dataset-fashion-mnist",
            "/usr/share/datasets/fashion-mnist",
            "--data",
            "SIAMESE_DATA",
            "train-images-idx3-ubyte(.gz)",
            "train-labels-idx1-ubyte(.gz)",
            "t10k-images-idx3-ubyte(.gz)",
            "t10k-labels-idx1-ubyte(.gz)",
        ],
    );
    let msg = data_err(locate(Some(&tmp.path().join("nowhere"))));
    assert_mentions(
        &msg,
        &["does not exist", "apt-get install dataset-fashion-mnist"],
    );

    // With three of the four files, the missing one is named.
    Synth::ok(20, 5).write(tmp.path());
    std::fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let msg = data_err(locate(Some(tmp.path())));
    assert_mentions(&msg, &["lacks t10k-labels-idx1-ubyte."]);
}

#[test]
fn held_out_classes_leave_training_and_make_up_the_test_split_relabelled() {
    let tmp = TempDir::new("heldout");
    Synth::ok(100, 50).write(tmp.path());
    let options = DataOptions {
        held_out_classes: vec!["2".into(), "7".into()],
        ..DataOptions::default()
    };
    let ds = load_with(Some(tmp.path()), Some(10), &options).unwrap();
    // Labels are i % 10: training keeps 80 of 100 images, 10 of them validation.
    assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (70, 10, 10));
    assert_eq!(ds.train_classes, ["0", "1", "3", "4", "5", "6", "8", "9"]);
    assert_eq!(ds.test_classes, ["2", "7"]);
    assert_eq!(
        &ds.train.labels[..4],
        [0, 1, 2, 3],
        "dense labels: class 3 is now 2"
    );
    assert_eq!(
        ds.train.image(2)[0],
        3,
        "the image of old class 3 kept its pixels"
    );
    assert_eq!(&ds.test.labels[..4], [0, 1, 0, 1]);
    assert_eq!(ds.test.image(1)[0], 7);

    let refused = |classes: &[&str]| {
        let options = DataOptions {
            held_out_classes: classes.iter().map(|c| c.to_string()).collect(),
            ..DataOptions::default()
        };
        load_with(Some(tmp.path()), Some(10), &options)
            .unwrap_err()
            .to_string()
    };
    assert_mentions(
        &refused(&["3"]),
        &["leaves the test split", "1 class(es) (3)"],
    );
    assert_mentions(&refused(&["10"]), &["no class `10`", "0, 1, 2"]);
}

#[test]
fn the_validation_split_is_the_last_images_defaulting_to_min_5000_or_a_tenth() {
    assert_eq!(default_val(60000), 5000);
    assert_eq!(default_val(100), 10);
    assert_eq!(default_val(49999), 4999);
    for gz in [false, true] {
        let tmp = TempDir::new("split");
        Synth {
            gz,
            ..Synth::ok(100, 7)
        }
        .write(tmp.path());
        let ds = load(Some(tmp.path()), None).unwrap();
        assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (90, 10, 7));
        // Image i has every pixel equal to i: validation is images 90..100, in order.
        for k in 0..10 {
            assert_eq!(ds.val.image(k), &[90 + k as u8; 12][..]);
            assert_eq!(ds.val.labels[k], k as u8);
        }
        assert_eq!(ds.train.image(89), &[89u8; 12][..]);
        assert_eq!(ds.train.images.len(), 90 * 12);
        let ds = load(Some(tmp.path()), Some(30)).unwrap();
        assert_eq!((ds.train.len(), ds.val.len()), (70, 30));
        assert_eq!(ds.val.image(0)[0], 70);
        let msg = config_err(load(Some(tmp.path()), Some(100)));
        assert_mentions(&msg, &["100", "smaller --val"]);
        let msg = config_err(load(Some(tmp.path()), Some(0)));
        assert_mentions(&msg, &["0 images", "never on test"]);
    }
}

#[test]
fn mismatched_counts_and_sizes_between_files_are_errors() {
    let tmp = TempDir::new("mismatch");
    Synth {
        train_labels: 19,
        ..Synth::ok(20, 5)
    }
    .write(tmp.path());
    let msg = data_err(load(Some(tmp.path()), None));
    assert_mentions(
        &msg,
        &[
            "train-images-idx3-ubyte",
            "20 images",
            "train-labels-idx1-ubyte",
            "19 labels",
        ],
    );

    let tmp = TempDir::new("sizes");
    Synth {
        test_size: (5, 3),
        ..Synth::ok(20, 5)
    }
    .write(tmp.path());
    let msg = data_err(load(Some(tmp.path()), None));
    assert_mentions(&msg, &["4x3", "5x3", "different datasets"]);

    // A label file where the images should be.
    let tmp = TempDir::new("rank");
    Synth::ok(20, 5).write(tmp.path());
    std::fs::copy(
        tmp.path().join("t10k-labels-idx1-ubyte"),
        tmp.path().join("t10k-images-idx3-ubyte"),
    )
    .unwrap();
    let msg = data_err(load(Some(tmp.path()), None));
    assert_mentions(&msg, &["t10k-images-idx3-ubyte", "3-D", "1 dimensions"]);
}

#[test]
fn image_sets_split_index_and_group_by_class() {
    let labels = vec![2u8, 0, 2, 1, 0];
    let images: Vec<u8> = (0..5u8).flat_map(|i| [i, i + 10]).collect();
    let set = ImageSet::new(images, labels, 1, 2).unwrap();
    assert_eq!(set.num_classes(), 3);
    assert_eq!(set.by_class(), vec![vec![1, 4], vec![3], vec![0, 2]]);
    assert_eq!(set.image(3), &[3, 13]);
    let (head, tail) = set.split_tail(2);
    assert_eq!((head.len(), tail.len()), (3, 2));
    assert_eq!(tail.labels, vec![1, 0]);
    assert_eq!(tail.image(0), &[3, 13]);
    assert_eq!(head.images, vec![0, 10, 1, 11, 2, 12]);
    assert!(ImageSet::new(vec![0; 5], vec![0; 3], 1, 2).is_err());
}

// ---------------------------------------------------------------------------------------
// samplers

#[test]
fn samplers_are_reproducible_from_their_seed() {
    let labels = uneven_labels();
    let a = PairSampler::new(&labels, 0.5, 7).unwrap().sample(500);
    let b = PairSampler::new(&labels, 0.5, 7).unwrap().sample(500);
    let c = PairSampler::new(&labels, 0.5, 8).unwrap().sample(500);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let t1 = TripletSampler::new(&labels, 3).unwrap().sample(500);
    let t2 = TripletSampler::new(&labels, 3).unwrap().sample(500);
    assert_eq!(t1, t2);
    assert_eq!(
        balanced_pairs(&labels, 300, 1234),
        balanced_pairs(&labels, 300, 1234)
    );
    // sample_into continues the same stream as sample.
    let mut s1 = PairSampler::new(&labels, 0.5, 9).unwrap();
    let mut s2 = PairSampler::new(&labels, 0.5, 9).unwrap();
    let mut batch = s2.sample(3);
    s2.sample_into(100, &mut batch);
    s1.sample(3);
    assert_eq!(s1.sample(100), batch);
}

#[test]
fn the_positive_fraction_is_the_requested_one_and_labels_match_classes() {
    let labels = uneven_labels();
    let n = 200_000;
    for p in [0.3, 0.5, 0.0, 1.0] {
        let batch = PairSampler::new(&labels, p, 11).unwrap().sample(n);
        assert_eq!((batch.a.len(), batch.b.len(), batch.len()), (n, n, n));
        let same = batch
            .labels
            .iter()
            .filter(|&&l| l == PairLabel::Same)
            .count();
        // Binomial(n, p): |same − np| within 4σ, σ = √(np(1−p)) (205 at p = 0.3); a
        // correct sampler exceeds this with probability 6e-5. p = 0 and 1 are exact.
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (same as f64 - n as f64 * p).abs() <= 4.0 * sigma,
            "p = {p}: {same} Same of {n}"
        );
        for i in 0..n {
            let (ca, cb) = (labels[batch.a[i] as usize], labels[batch.b[i] as usize]);
            match batch.labels[i] {
                PairLabel::Same => assert_eq!(ca, cb, "Same pair {i} crosses classes"),
                PairLabel::Different => assert_ne!(ca, cb, "Different pair {i} shares a class"),
            }
        }
    }
    // balanced_pairs: p = 0.5, n = 10000, σ = 50, 4σ = 200.
    let batch = balanced_pairs(&labels, 10_000, 1234);
    let same = batch
        .labels
        .iter()
        .filter(|&&l| l == PairLabel::Same)
        .count();
    assert!((same as i64 - 5000).abs() <= 200, "{same}");
}

#[test]
fn anchors_are_uniform_over_images_and_negatives_uniform_over_other_classes() {
    let labels = uneven_labels();
    let total = labels.len() as f64; // 5500
    let share = |c: usize| (c + 1) as f64 * 100.0 / total;
    let n = 200_000;
    let batch = PairSampler::new(&labels, 0.5, 5).unwrap().sample(n);

    // Anchor classes ∝ class size. Chi-square with 9 degrees of freedom: a correct
    // sampler exceeds 40 with probability 7.6e-6; anchors uniform over CLASSES would
    // score about 10^5.
    let mut anchor = [0u64; 10];
    for &a in &batch.a {
        anchor[labels[a as usize] as usize] += 1;
    }
    let expected: Vec<f64> = (0..10).map(|c| n as f64 * share(c)).collect();
    let chi = chi_square(&anchor, &expected);
    assert!(
        chi < 40.0,
        "anchor classes: chi² {chi:.1}, counts {anchor:?}"
    );

    // Different partners: class uniform over the anchor's 9 others, so
    // P(partner class o) = (1 − share(o)) / 9 — not ∝ size, as "uniform over all other
    // images" would give (chi² in the thousands). Same bound, 9 degrees of freedom.
    let mut partner = [0u64; 10];
    let mut n_diff = 0u64;
    for i in 0..n {
        if batch.labels[i] == PairLabel::Different {
            partner[labels[batch.b[i] as usize] as usize] += 1;
            n_diff += 1;
        }
    }
    let expected: Vec<f64> = (0..10)
        .map(|o| n_diff as f64 * (1.0 - share(o)) / 9.0)
        .collect();
    let chi = chi_square(&partner, &expected);
    assert!(
        chi < 40.0,
        "negative classes: chi² {chi:.1}, counts {partner:?}"
    );

    // Same partners are uniform over the anchor's class INCLUDING the anchor (the
    // reference's rng.choice(by_class[c])): P(b = a | Same) = Σ_c share(c) / size(c)
    // = 10 / 5500. Binomial 4σ bound on the count of self-pairs.
    let n_same = n as u64 - n_diff;
    let selfs = (0..n)
        .filter(|&i| batch.labels[i] == PairLabel::Same && batch.a[i] == batch.b[i])
        .count() as f64;
    let p_self = 10.0 / total;
    let mean = n_same as f64 * p_self;
    let sigma = (mean * (1.0 - p_self)).sqrt();
    assert!(
        (selfs - mean).abs() <= 4.0 * sigma,
        "{selfs} self-pairs, expected {mean:.0}"
    );
}

#[test]
fn triplets_are_valid_and_negatives_uniform_over_other_classes() {
    // Class 3 has a single image: its positive can only be itself.
    let mut labels = uneven_labels();
    labels.retain(|&c| c != 3);
    labels.push(3);
    let single = (labels.len() - 1) as u32;
    let n = 100_000;
    let batch = TripletSampler::new(&labels, 21).unwrap().sample(n);
    assert_eq!(
        (
            batch.anchor.len(),
            batch.positive.len(),
            batch.negative.len()
        ),
        (n, n, n)
    );
    let mut neg = [0u64; 10];
    let mut singles = 0;
    for i in 0..n {
        let (a, p, q) = (batch.anchor[i], batch.positive[i], batch.negative[i]);
        let c = labels[a as usize];
        assert_eq!(
            labels[p as usize], c,
            "triplet {i}: positive of another class"
        );
        assert_ne!(
            labels[q as usize], c,
            "triplet {i}: negative of the anchor's class"
        );
        if a == single {
            assert_eq!(p, a);
            singles += 1;
        } else {
            assert_ne!(
                p, a,
                "triplet {i}: positive equals anchor in a class of several"
            );
        }
        neg[labels[q as usize] as usize] += 1;
    }
    assert!(singles > 0, "the single-image class was never an anchor");
    // Negative class uniform over the anchor's others: P(o) = (1 − P(anchor in o)) / 9.
    // Chi-square, 9 degrees of freedom, bound 40 (P 7.6e-6 for a correct sampler).
    let total = labels.len() as f64;
    let size = |c: u8| labels.iter().filter(|&&l| l == c).count() as f64;
    let expected: Vec<f64> = (0..10u8)
        .map(|o| n as f64 * (1.0 - size(o) / total) / 9.0)
        .collect();
    let chi = chi_square(&neg, &expected);
    assert!(
        chi < 40.0,
        "negative classes: chi² {chi:.1}, counts {neg:?}"
    );

    // A class of two: the positive is always the other one.
    let labels = [0u8, 1, 1, 0, 2];
    let batch = TripletSampler::new(&labels, 1).unwrap().sample(200);
    for i in 0..200 {
        let (a, p) = (batch.anchor[i], batch.positive[i]);
        match a {
            0 => assert_eq!(p, 3),
            3 => assert_eq!(p, 0),
            1 => assert_eq!(p, 2),
            2 => assert_eq!(p, 1),
            _ => assert_eq!(p, 4),
        }
    }
}

#[test]
fn samplers_refuse_bad_fractions_single_classes_and_empty_classes() {
    let labels = uneven_labels();
    for p in [1.5, -0.1, f64::NAN] {
        let msg = config_err(PairSampler::new(&labels, p, 0));
        assert_mentions(&msg, &["positive fraction", "[0, 1]"]);
    }
    let msg = data_err(PairSampler::new(&[4, 4, 4], 0.5, 0));
    assert_mentions(&msg, &["1 class", "at least 2 classes"]);
    let msg = data_err(PairSampler::new(&[], 0.5, 0));
    assert_mentions(&msg, &["empty"]);
    // Class 1 has no image: it cannot be a negative class...
    let msg = data_err(PairSampler::new(&[0, 2, 0, 2], 0.5, 0));
    assert_mentions(&msg, &["class 1 has no images", "--val"]);
    let msg = data_err(TripletSampler::new(&[0, 2, 0, 2], 0));
    assert_mentions(&msg, &["class 1 has no images"]);
    assert!(try_balanced_pairs(&[0, 2, 0, 2], 10, 0).is_err());
    // ...but Same-only pairs never need one.
    let batch = PairSampler::new(&[0, 2, 0, 2], 1.0, 0).unwrap().sample(50);
    assert!(batch.labels.iter().all(|&l| l == PairLabel::Same));
}

// ---------------------------------------------------------------------------------------
// the decoded-folder cache

/// An ImageFolder tree: classes a, b, c; RGB PNGs of two sizes, the class in the colour.
fn write_image_folder(dir: &Path) {
    let mut state = 3u64;
    for (split, per_class) in [("train", 20), ("test", 6)] {
        for (c, class) in ["a", "b", "c"].iter().enumerate() {
            let class_dir = dir.join(split).join(class);
            std::fs::create_dir_all(&class_dir).unwrap();
            for i in 0..per_class {
                let (w, h) = if i % 2 == 0 { (16, 16) } else { (20, 18) };
                let img = image::RgbImage::from_fn(w, h, |_, _| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let mut px = [(state >> 58) as u8; 3];
                    px[c] = px[c].saturating_add(150);
                    image::Rgb(px)
                });
                img.save(class_dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// The cache files under `dir`.
fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("folders"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn same_data(a: &siamese_gpu::data::dataset::Dataset, b: &siamese_gpu::data::dataset::Dataset) {
    assert!(a.train == b.train && a.val == b.val && a.test == b.test);
    assert_eq!(a.train_classes, b.train_classes);
    assert_eq!(a.test_classes, b.test_classes);
}

#[test]
fn a_decoded_folder_is_cached_and_decoded_again_when_an_image_changes_or_is_added() {
    let tmp = TempDir::new("folder-cache");
    let data = tmp.path().join("data");
    write_image_folder(&data);
    let cache = tmp.path().join("cache");
    let options = DataOptions {
        color: siamese_gpu::vocab::Color::Rgb,
        image_size: Some([12, 12]),
        cache_dir: Some(cache.clone()),
        ..DataOptions::default()
    };
    let uncached = DataOptions {
        cache_dir: None,
        ..options.clone()
    };
    let load = |o: &DataOptions| load_with(Some(&data), Some(6), o).unwrap();
    let reference = load(&uncached);
    assert!(!cache.exists(), "no cache without a cache directory");

    let first = load(&options);
    same_data(&first, &reference);
    assert_eq!(first.warnings, Vec::<String>::new());
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "one cache file: {files:?}");
    assert!(
        same_bytes_after(&files[0], || same_data(&load(&options), &reference)),
        "a second read takes the cache as it is"
    );

    // The cache is what a second run reads: an image replaced by garbage of the same size
    // and modification time goes unnoticed (the documented limit of the check) ...
    let image = data.join("train/b/003.png");
    let (len, modified) = {
        let m = std::fs::metadata(&image).unwrap();
        (m.len() as usize, m.modified().unwrap())
    };
    std::fs::write(&image, vec![b'x'; len]).unwrap();
    let set_mtime = |t| {
        std::fs::File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_modified(t)
            .unwrap()
    };
    set_mtime(modified);
    let hit = load(&options);
    same_data(&hit, &reference);
    assert!(hit.warnings.is_empty(), "{:?}", hit.warnings);
    // ... and one with a new modification time is decoded again (here: found unreadable).
    set_mtime(modified + std::time::Duration::from_secs(5));
    let changed = load(&options);
    assert_eq!(changed.train.len() + changed.val.len(), 59);
    assert_eq!(changed.warnings.len(), 1, "{:?}", changed.warnings);
    assert!(changed.warnings[0].starts_with("skipped ") && changed.warnings[0].contains("003.png"));
    // The skip is cached with the pixels: the next read warns the same.
    assert_eq!(load(&options).warnings, changed.warnings);

    // An added image is decoded.
    std::fs::copy(data.join("train/a/000.png"), data.join("train/a/100.png")).unwrap();
    let added = load(&options);
    assert_eq!(added.train.len() + added.val.len(), 60);

    // Other read settings are another cache file; the first stays.
    let bigger = DataOptions {
        image_size: Some([14, 14]),
        ..options.clone()
    };
    assert_eq!(load(&bigger).train.height, 14);
    assert_eq!(cache_files(&cache).len(), 2);
}

/// Whether `f` leaves `path` byte for byte as it was.
fn same_bytes_after(path: &Path, f: impl FnOnce()) -> bool {
    let before = std::fs::read(path).unwrap();
    f();
    std::fs::read(path).unwrap() == before
}

#[test]
fn a_corrupt_or_truncated_cache_is_decoded_again_and_an_unwritable_one_is_said() {
    let tmp = TempDir::new("folder-cache-bad");
    let data = tmp.path().join("data");
    write_image_folder(&data);
    let cache = tmp.path().join("cache");
    let options = DataOptions {
        cache_dir: Some(cache.clone()),
        ..DataOptions::default()
    };
    let load = |o: &DataOptions| load_with(Some(&data), Some(6), o).unwrap();
    let reference = load(&DataOptions::default());
    load(&options);
    let file = cache_files(&cache).remove(0);
    let good = std::fs::read(&file).unwrap();

    // One flipped bit in the pixels, then half the file: each refused by its checksum.
    let mut flipped = good.clone();
    flipped[good.len() * 3 / 4] ^= 0x10;
    for broken in [flipped, good[..good.len() / 2].to_vec(), b"junk".to_vec()] {
        std::fs::write(&file, &broken).unwrap();
        let reread = load(&options);
        same_data(&reread, &reference);
        assert_eq!(reread.warnings.len(), 1, "{:?}", reread.warnings);
        assert!(
            reread.warnings[0].contains("the decode cache")
                && reread.warnings[0].contains("decoding the images again"),
            "{}",
            reread.warnings[0]
        );
        assert!(std::fs::read(&file).unwrap() == good, "rebuilt as it was");
        assert!(load(&options).warnings.is_empty(), "and trusted again");
    }

    // A cache directory that cannot be made: the data loads, with a warning.
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let unwritable = DataOptions {
        cache_dir: Some(blocker.join("cache")),
        ..DataOptions::default()
    };
    let loaded = load(&unwritable);
    same_data(&loaded, &reference);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].contains("could not write the decode cache")
            && loaded.warnings[0].contains("--cache-dir"),
        "{}",
        loaded.warnings[0]
    );
}

// ---------------------------------------------------------------------------------------
// folder images: orientation, conversions, resize policies, class sizes

use image::{ImageEncoder, codecs::png::PngEncoder};
use siamese_gpu::vocab::{Color, Resize};

/// Writes a PNG of `color` type from raw samples, with an EXIF orientation if given.
fn write_png(
    path: &Path,
    raw: &[u8],
    (w, h): (u32, u32),
    color: image::ExtendedColorType,
    exif: Option<u16>,
) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut enc = PngEncoder::new(std::fs::File::create(path).unwrap());
    if let Some(orientation) = exif {
        // A TIFF header and one IFD entry: tag 0x0112 (Orientation), SHORT, count 1.
        let mut tiff = vec![
            b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1,
        ];
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        enc.set_exif_metadata(tiff).unwrap();
    }
    enc.write_image(raw, w, h, color).unwrap();
}

/// The image of `set` at `i` as `[C, H, W]` bytes.
fn planes(set: &ImageSet, i: usize) -> Vec<u8> {
    set.image(i).to_vec()
}

#[test]
fn folder_images_are_turned_by_their_exif_orientation_and_converted_by_the_stated_rules() {
    let tmp = TempDir::new("convert");
    let root = tmp.path();
    // Pixels A B / C D, RGB.
    let [a, b, c, d] = [
        [200u8, 10, 20],
        [30, 180, 40],
        [50, 60, 170],
        [90, 100, 110],
    ];
    let abcd: Vec<u8> = [a, b, c, d].concat();
    let rgb8 = image::ExtendedColorType::Rgb8;
    write_png(&root.join("train/a/0.png"), &abcd, (2, 2), rgb8, None);
    // EXIF 6: shown turned 90° clockwise, C A / D B.
    write_png(&root.join("train/a/1.png"), &abcd, (2, 2), rgb8, Some(6));
    // 16-bit: round(v / 257).
    let wide: Vec<u16> = vec![
        0,
        2698,
        2699,
        65535,
        257 * 7,
        257 * 250,
        1,
        128,
        129,
        65407,
        65408,
        300,
    ];
    let bytes: Vec<u8> = wide.iter().flat_map(|v| v.to_ne_bytes()).collect();
    write_png(
        &root.join("train/b/0.png"),
        &bytes,
        (2, 2),
        image::ExtendedColorType::Rgb16,
        None,
    );
    // RGBA: the alpha is dropped.
    let rgba: Vec<u8> = [a, b, c, d]
        .iter()
        .zip([0u8, 80, 160, 255])
        .flat_map(|(p, al)| [p[0], p[1], p[2], al])
        .collect();
    write_png(
        &root.join("train/b/1.png"),
        &rgba,
        (2, 2),
        image::ExtendedColorType::Rgba8,
        None,
    );
    for class in ["a", "b"] {
        write_png(
            &root.join(format!("test/{class}/0.png")),
            &abcd,
            (2, 2),
            rgb8,
            None,
        );
    }
    let load = |color| {
        let options = DataOptions {
            color,
            cache_dir: None,
            ..DataOptions::default()
        };
        let ds = load_with(Some(root), Some(1), &options).unwrap();
        // Round-robin: a/0, b/0, a/1 for training, b/1 the validation tail.
        assert_eq!(ds.train.labels, [0, 1, 0]);
        (ds.train, ds.val)
    };
    let as_planes = |pixels: &[[u8; 3]]| -> Vec<u8> {
        (0..3)
            .flat_map(|ch| pixels.iter().map(move |p| p[ch]))
            .collect()
    };
    let (train, val) = load(Color::Rgb);
    assert_eq!(planes(&train, 0), as_planes(&[a, b, c, d]));
    assert_eq!(
        planes(&train, 2),
        as_planes(&[c, a, d, b]),
        "EXIF orientation 6"
    );
    let rounded: Vec<u8> = wide
        .iter()
        .map(|&v| ((v as u32 + 128) / 257) as u8)
        .collect();
    assert_eq!(&rounded[..4], [0, 10, 11, 255]);
    let px = |i: usize| [rounded[3 * i], rounded[3 * i + 1], rounded[3 * i + 2]];
    assert_eq!(
        planes(&train, 1),
        as_planes(&[px(0), px(1), px(2), px(3)]),
        "16-bit"
    );
    assert_eq!(planes(&val, 0), as_planes(&[a, b, c, d]), "alpha dropped");

    // Grey: ITU-R 601-2 luma with PIL's rounding, e.g. A = (200, 10, 20) → 68 (0.299·200 + 0.587·10 + 0.114·20 = 67.95).
    let luma = |p: [u8; 3]| {
        ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8
    };
    assert_eq!(luma(a), 68);
    let (train, _) = load(Color::Grey);
    assert_eq!(planes(&train, 0), [a, b, c, d].map(luma));
    assert_eq!(planes(&train, 2), [c, a, d, b].map(luma));
}

#[test]
fn resize_policies_stretch_crop_the_centre_or_pad_with_black() {
    let tmp = TempDir::new("resize");
    let root = tmp.path();
    // 4 wide, 2 high: columns 10, 60, 150, 200 (grey, in RGB).
    let cols = [10u8, 60, 150, 200];
    let wide: Vec<u8> = (0..2)
        .flat_map(|_| cols.iter().flat_map(|&v| [v, v, v]))
        .collect();
    let rgb8 = image::ExtendedColorType::Rgb8;
    for path in [
        "train/a/0.png",
        "train/a/1.png",
        "train/b/0.png",
        "train/b/1.png",
        "test/a/0.png",
        "test/b/0.png",
    ] {
        write_png(&root.join(path), &wide, (4, 2), rgb8, None);
    }
    let first = |resize| {
        let options = DataOptions {
            image_size: Some([2, 2]),
            resize,
            cache_dir: None,
            ..DataOptions::default()
        };
        planes(&load_with(Some(root), Some(1), &options).unwrap().train, 0)
    };
    // Scaled to cover 2×2 (here: not scaled), the middle two columns kept.
    assert_eq!(first(Resize::ShorterSideCenterCrop), [60, 150, 60, 150]);
    // Scaled to fit (2×1), centred: the top row holds the image, the bottom is black.
    let pad = first(Resize::Pad);
    assert_eq!(&pad[2..], [0, 0]);
    assert!(
        pad[0] < pad[1] && (10..=105).contains(&pad[0]) && (105..=200).contains(&pad[1]),
        "{pad:?}"
    );
    // Stretched: both rows alike, left darker than right.
    let stretch = first(Resize::Stretch);
    assert!(
        stretch[..2] == stretch[2..] && stretch[0] < stretch[1],
        "{stretch:?}"
    );
    assert_eq!(
        Resize::parse("shorter-side+center-crop"),
        Some(Resize::ShorterSideCenterCrop)
    );
    assert_eq!(Resize::parse("crop"), None);
}

#[test]
fn a_class_without_training_images_is_refused_and_one_of_a_single_image_warned() {
    let tmp = TempDir::new("class-sizes");
    let root = tmp.path();
    let px = vec![100u8; 12];
    let rgb8 = image::ExtendedColorType::Rgb8;
    for path in [
        "train/a/0.png",
        "train/a/1.png",
        "train/a/2.png",
        "train/b/0.png",
        "test/a/0.png",
        "test/b/0.png",
    ] {
        write_png(&root.join(path), &px, (2, 2), rgb8, None);
    }
    std::fs::create_dir_all(root.join("train/c")).unwrap();
    let options = DataOptions {
        cache_dir: None,
        ..DataOptions::default()
    };
    let err = data_err(load_with(Some(root), Some(1), &options));
    assert_mentions(&err, &["no image of 1 class(es): c", "--held-out-classes"]);
    std::fs::remove_dir(root.join("train/c")).unwrap();
    let ds = load_with(Some(root), Some(1), &options).unwrap();
    assert_eq!(ds.warnings.len(), 1, "{:?}", ds.warnings);
    assert_mentions(
        &ds.warnings[0],
        &["1 class(es)", "single training image (b)"],
    );
}

#[test]
fn a_pairs_file_is_read_with_its_folds_and_its_counts_checked_against_the_header() {
    use siamese_gpu::data::pairs_file;
    let tmp = TempDir::new("pairs-file");
    let root = tmp.path();
    for (name, n) in [("Ann", 2), ("Bob", 1)] {
        for i in 1..=n {
            write_png(
                &root.join(format!("{name}/{name}_{i:04}.png")),
                &[9; 12],
                (2, 2),
                image::ExtendedColorType::Rgb8,
                None,
            );
        }
    }
    let file = root.join("pairs.txt");
    std::fs::write(&file, "2 1\nAnn 1 2\nAnn 1 Bob 1\nAnn 2 1\nBob 1 Ann 2\n").unwrap();
    let list = pairs_file::read(&file, root).unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list.folds, [0, 0, 1, 1]);
    assert_eq!(list.fold_count, 2);
    assert_eq!(list.images.len(), 3, "each image once");
    assert_eq!(
        (list.a.clone(), list.b.clone()),
        (vec![0, 0, 1, 2], vec![1, 2, 0, 1])
    );
    assert_eq!(
        list.labels,
        [
            PairLabel::Same,
            PairLabel::Different,
            PairLabel::Same,
            PairLabel::Different
        ]
    );

    let refused = |text: &str| {
        std::fs::write(&file, text).unwrap();
        data_err(pairs_file::read(&file, root))
    };
    assert_mentions(
        &refused("2 1\nAnn 1 2\nAnn 1 Bob 1\n"),
        &["promises 2 fold(s)", "but 2 follow"],
    );
    assert_mentions(
        &refused("1 1\nAnn 1 2\nAnn 1 Bob 1\nAnn 2 1\n"),
        &["line 4", "one more"],
    );
    assert_mentions(
        &refused("one two\n"),
        &["line 1", "not LFW's header", ".csv extension"],
    );
    assert_mentions(
        &refused("1 1\nAnn 1 x\nAnn 1 Bob 1\n"),
        &["line 2", "`x` is not an image number"],
    );
}

#[test]
fn images_under_half_the_input_size_are_named_as_too_small() {
    let tmp = TempDir::new("too-small");
    let root = tmp.path();
    let rgb8 = image::ExtendedColorType::Rgb8;
    for path in [
        "train/a/0.png",
        "train/a/1.png",
        "train/b/0.png",
        "train/b/1.png",
        "test/a/0.png",
        "test/b/0.png",
    ] {
        write_png(&root.join(path), &[80; 16 * 16 * 3], (16, 16), rgb8, None);
    }
    // 16 wide but 6 high: under half of 16 on one side.
    write_png(
        &root.join("train/b/2.png"),
        &[80; 16 * 6 * 3],
        (16, 6),
        rgb8,
        None,
    );
    let options = DataOptions {
        image_size: Some([16, 16]),
        cache_dir: Some(root.join("cache")),
        ..DataOptions::default()
    };
    for _ in 0..2 {
        // Decoded, then read from the cache: the same warning.
        let ds = load_with(Some(root), Some(1), &options).unwrap();
        assert_eq!(ds.warnings.len(), 1, "{:?}", ds.warnings);
        assert_mentions(
            &ds.warnings[0],
            &[
                "1 image(s)",
                "under half the 16×16 input",
                "train/b/2.png (16×6)",
                "--image-size",
            ],
        );
    }
}
