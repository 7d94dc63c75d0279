//! Tower specs: parsing, shape inference, and the errors a mistyped or ill-fitting spec gets.

use siamese_gpu::nn::spec::REFERENCE_TOWER;
use siamese_gpu::nn::{ParamLayout, Tower, TowerSpec};

fn build(spec: &str) -> siamese_gpu::Result<Tower> {
    let spec: TowerSpec = spec.parse()?;
    Tower::new(&spec, [1, 28, 28], "tower", &mut ParamLayout::default())
}

fn error(spec: &str) -> String {
    build(spec)
        .expect_err("the spec must be refused")
        .to_string()
}

#[test]
fn the_reference_tower_infers_its_shapes_and_names_its_parameters_like_pytorch() {
    let mut layout = ParamLayout::default();
    let tower = Tower::new(
        &REFERENCE_TOWER.parse().unwrap(),
        [1, 28, 28],
        "tower",
        &mut layout,
    )
    .unwrap();
    assert_eq!(tower.embedding_dim(), 128);
    // 28 → conv5 → 24 → pool → 12 → conv3 → 10 → pool → 5: the flatten is 64·5·5 = 1600.
    assert!(
        tower.summary().contains("flatten") && tower.summary().contains("[1600]"),
        "{}",
        tower.summary()
    );
    let names: Vec<(&str, Vec<usize>)> = layout
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.shape.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("tower.0.weight", vec![32, 1, 5, 5]),
            ("tower.0.bias", vec![32]),
            ("tower.3.weight", vec![64, 32, 3, 3]),
            ("tower.3.bias", vec![64]),
            ("tower.7.weight", vec![128, 1600]),
            ("tower.7.bias", vec![128]),
        ]
    );
    assert!(
        layout.params.iter().all(|p| p.offset % 64 == 0),
        "views start on 256-byte boundaries"
    );
    // 832 + 18496 + 204928 parameters, as PyTorch counts them.
    assert_eq!(
        layout.params.iter().map(|p| p.len()).sum::<usize>(),
        224_256
    );
}

#[test]
fn a_spec_prints_back_as_it_parses() {
    let text = "conv 8 3 stride=2 pad=1 | tanh | avgpool 2 1 | flatten | dense 10 | l2norm";
    let spec: TowerSpec = text.parse().unwrap();
    assert_eq!(spec.to_string(), text);
    assert_eq!(spec.to_string().parse::<TowerSpec>().unwrap(), spec);
}

#[test]
fn initialisation_is_seeded_and_bounded_like_pytorch() {
    let mut layout = ParamLayout::default();
    Tower::new(
        &REFERENCE_TOWER.parse().unwrap(),
        [1, 28, 28],
        "tower",
        &mut layout,
    )
    .unwrap();
    let (a, b) = (layout.init(3), layout.init(3));
    assert_eq!(a, b, "the same seed gives the same weights");
    assert_ne!(a, layout.init(4));
    for p in &layout.params {
        let bound = 1.0 / (p.fan_in as f32).sqrt();
        let v = &a[p.offset..p.offset + p.len()];
        assert!(
            v.iter().all(|x| x.abs() <= bound),
            "{} outside ±1/√fan_in",
            p.name
        );
        // Uniform on ±bound has mean |x| = bound/2; with ≥ 32 draws the sample mean is
        // within 0.25·bound of it with overwhelming probability.
        let mean_abs = v.iter().map(|x| x.abs()).sum::<f32>() / v.len() as f32;
        assert!(
            (mean_abs - bound / 2.0).abs() < 0.25 * bound,
            "{}: mean |x| {mean_abs}, bound {bound}",
            p.name
        );
    }
}

#[test]
fn an_unknown_layer_is_named_with_the_known_ones() {
    let msg = error("conv 32 5 | relu | maxpol 2 | flatten | dense 128");
    assert!(
        msg.contains("layer 2 `maxpol 2`")
            && msg.contains("unknown layer `maxpol`")
            && msg.contains("maxpool K"),
        "{msg}"
    );
}

#[test]
fn missing_or_bad_arguments_say_what_is_expected() {
    let msg = error("conv 32 | flatten | dense 8");
    assert!(
        msg.contains("layer 0 `conv 32`") && msg.contains("conv OUT K"),
        "{msg}"
    );
    let msg = error("conv 32 0 | flatten | dense 8");
    assert!(msg.contains("K must be a positive integer"), "{msg}");
    let msg = error("conv 32 3 dilation=2 | flatten | dense 8");
    assert!(msg.contains("unknown option `dilation=2`"), "{msg}");
    let msg = error("flatten | dense");
    assert!(msg.contains("expected `dense N`"), "{msg}");
}

#[test]
fn layers_that_do_not_fit_their_input_are_refused_with_the_shapes() {
    let msg = error("conv 32 5 | maxpool 2 | conv 64 13 | flatten | dense 8");
    assert!(
        msg.contains("layer 2 `conv 64 13` on input [32, 12, 12]") && msg.contains("does not fit"),
        "{msg}"
    );
    let msg = error("conv 32 5 | dense 128");
    assert!(msg.contains("add `flatten` before it"), "{msg}");
    let msg = error("flatten | conv 8 3");
    assert!(msg.contains("already flat"), "{msg}");
    let msg = error("conv 32 5 | relu");
    assert!(msg.contains("ends in a [32, 24, 24] feature map"), "{msg}");
}
