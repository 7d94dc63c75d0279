//! Tower specs: parsing, shape inference, and the errors a mistyped or ill-fitting spec gets.

use siamese_gpu::nn::spec::REFERENCE_TOWER;
use siamese_gpu::nn::{Init, ParamLayout, Tower, TowerSpec};

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
        let Init::Uniform { fan_in } = p.init else {
            panic!("{}: conv and dense tensors draw from a uniform", p.name)
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
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
    assert!(msg.contains("add `flatten` (or `gap`) before it"), "{msg}");
    let msg = error("flatten | conv 8 3");
    assert!(msg.contains("already flat"), "{msg}");
    let msg = error("conv 32 5 | relu");
    assert!(msg.contains("ends in a [32, 24, 24] feature map"), "{msg}");
}

fn build_on(spec: &str, input: [usize; 3]) -> (Tower, ParamLayout) {
    let mut layout = ParamLayout::default();
    let tower = Tower::new(&spec.parse().unwrap(), input, "tower", &mut layout).unwrap();
    (tower, layout)
}

fn shape_of(layout: &ParamLayout, name: &str) -> Vec<usize> {
    let i = layout
        .index_of(name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    layout.params[i].shape.clone()
}

#[test]
fn resnet18_has_torchvision_names_shapes_and_parameter_count() {
    let (tower, layout) = build_on("resnet18", [3, 64, 64]);
    assert_eq!(tower.embedding_dim(), 128);
    for (name, shape) in [
        ("tower.conv1.weight", vec![64, 3, 7, 7]),
        ("tower.bn1.weight", vec![64]),
        ("tower.layer1.0.conv1.weight", vec![64, 64, 3, 3]),
        ("tower.layer1.1.bn2.bias", vec![64]),
        ("tower.layer2.0.conv1.weight", vec![128, 64, 3, 3]),
        ("tower.layer2.0.downsample.0.weight", vec![128, 64, 1, 1]),
        ("tower.layer2.0.downsample.1.weight", vec![128]),
        ("tower.layer4.1.conv2.weight", vec![512, 512, 3, 3]),
        ("tower.fc.weight", vec![128, 512]),
        ("tower.fc.bias", vec![128]),
    ] {
        assert_eq!(shape_of(&layout, name), shape, "{name}");
    }
    assert!(
        layout.index_of("tower.conv1.bias").is_none(),
        "torchvision's convolutions have no bias"
    );
    // torchvision.models.resnet18(num_classes=128): 11,176,512 parameters before `fc`, and
    // 512·128 + 128 in it.
    let count: usize = layout.params.iter().map(|p| p.len()).sum();
    assert_eq!(count, 11_176_512 + 65_664);
    // 20 BatchNorm layers (the stem's, two per block, one per projection), each a running
    // mean and variance.
    assert_eq!(tower.state.params.len(), 2 * 20);
    assert!(
        tower
            .state
            .params
            .iter()
            .any(|p| p.name == "tower.layer4.1.bn2.running_var" && p.shape == vec![512])
    );
    // 64×64 → stem /2 → 32 → max-pool /2 → 16 → 16, 8, 4, 2 → gap.
    assert!(
        tower.summary().contains("[512, 2, 2]"),
        "{}",
        tower.summary()
    );
}

#[test]
fn resnet34_and_grey_inputs_follow_the_same_layout() {
    let (_, layout) = build_on("resnet34", [1, 32, 32]);
    assert_eq!(shape_of(&layout, "tower.conv1.weight"), vec![64, 1, 7, 7]);
    assert_eq!(
        shape_of(&layout, "tower.layer3.5.conv2.weight"),
        vec![256, 256, 3, 3]
    );
    // torchvision's resnet34 has 21,284,672 parameters before `fc` (RGB); a grey stem has
    // 64·2·49 fewer.
    let count: usize = layout.params.iter().map(|p| p.len()).sum();
    assert_eq!(count, 21_284_672 - 64 * 2 * 49 + 65_664);
}

#[test]
fn the_small_resnet_matches_the_modern_reference() {
    // peers/modern_reference.py's resnet(16): 85,424 parameters, nn.Sequential's numbering
    // with the blocks' own module names.
    let (tower, layout) = build_on("resnet-small", [1, 28, 28]);
    let count: usize = layout.params.iter().map(|p| p.len()).sum();
    assert_eq!(count, 85_424);
    assert_eq!(shape_of(&layout, "tower.0.weight"), vec![16, 1, 3, 3]);
    assert_eq!(shape_of(&layout, "tower.4.c1.weight"), vec![32, 16, 3, 3]);
    assert_eq!(
        shape_of(&layout, "tower.4.proj.0.weight"),
        vec![32, 16, 1, 1]
    );
    assert_eq!(shape_of(&layout, "tower.5.b2.weight"), vec![64]);
    assert_eq!(shape_of(&layout, "tower.8.weight"), vec![128, 64]);
    assert!(
        layout.index_of("tower.3.proj.0.weight").is_none(),
        "identity shortcut"
    );
    assert!(
        tower.summary().contains("[64, 7, 7]"),
        "{}",
        tower.summary()
    );
    let (_, wide) = build_on("resnet-small width=8 dim=32", [3, 32, 32]);
    assert_eq!(shape_of(&wide, "tower.0.weight"), vec![8, 3, 3, 3]);
    assert_eq!(shape_of(&wide, "tower.8.weight"), vec![32, 32]);
}

#[test]
fn presets_print_back_by_name_and_resize_their_embedding() {
    for text in ["resnet18", "resnet34 dim=64", "resnet-small width=8 dim=32"] {
        let spec: TowerSpec = text.parse().unwrap();
        assert_eq!(spec.to_string(), text);
    }
    let spec: TowerSpec = "resnet18".parse().unwrap();
    assert_eq!(
        spec.with_embedding_dim(256).unwrap().to_string(),
        "resnet18 dim=256"
    );
    let spec: TowerSpec = "conv 4 3 | flatten | dense 8".parse().unwrap();
    assert_eq!(
        spec.with_embedding_dim(5).unwrap().to_string(),
        "conv 4 3 | flatten | dense 5"
    );
    let msg = "resnet18 width=4"
        .parse::<TowerSpec>()
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown option `width=4`"), "{msg}");
}

#[test]
fn residual_blocks_parse_print_back_and_name_their_layers() {
    let text = "conv 8 3 pad=1 bias=false | bn | relu | res(conv 8 3 pad=1 bias=false | bn | \
                relu | conv 8 3 pad=1 bias=false | bn) | relu | res(conv 16 3 stride=2 pad=1 \
                bias=false | bn ; conv 16 1 stride=2 bias=false | bn) | gap | dropout 0.25 | \
                dense 4";
    let spec: TowerSpec = text.parse().unwrap();
    assert_eq!(spec.to_string().parse::<TowerSpec>().unwrap(), spec);
    let (tower, layout) = build_on(text, [1, 9, 9]);
    assert_eq!(tower.embedding_dim(), 4);
    assert_eq!(
        shape_of(&layout, "tower.3.branch.3.weight"),
        vec![8, 8, 3, 3]
    );
    assert_eq!(
        shape_of(&layout, "tower.5.shortcut.0.weight"),
        vec![16, 8, 1, 1]
    );
    assert_eq!(shape_of(&layout, "tower.5.shortcut.1.weight"), vec![16]);
    assert_eq!(tower.state.params.len(), 2 * 5);
    assert!(
        tower.summary().contains("identity shortcut"),
        "{}",
        tower.summary()
    );
    assert!(
        tower.summary().contains("[16, 5, 5]"),
        "{}",
        tower.summary()
    );
    let pool: TowerSpec = "maxpool 3 2 pad=1 | flatten".parse().unwrap();
    assert_eq!(pool.to_string(), "maxpool 3 2 pad=1 | flatten");
}

#[test]
fn misplaced_or_ill_fitting_modern_layers_are_refused_naming_the_layer() {
    let msg = error("conv 8 3 | res(conv 16 3 pad=1 | bn) | flatten | dense 4");
    assert!(
        msg.contains("layer 1 `res(conv 16 3 pad=1 | bn)`")
            && msg.contains("turns [8, 26, 26] into [16, 26, 26]")
            && msg.contains("projection"),
        "{msg}"
    );
    let msg = error("conv 8 3 | res(conv 8 3 | bn ; conv 8 1) | flatten | dense 4");
    assert!(
        msg.contains("the branch gives [8, 24, 24] but the shortcut [8, 26, 26]"),
        "{msg}"
    );
    let msg = error("conv 8 3 | relu | bn | flatten | dense 4");
    assert!(
        msg.contains("layer 2 `bn`") && msg.contains("right after one"),
        "{msg}"
    );
    let msg = error("bn | conv 8 3 | flatten | dense 4");
    assert!(msg.contains("layer 0 `bn`"), "{msg}");
    let msg = error("conv 8 3 | flatten | dropout 1.5 | dense 4");
    assert!(
        msg.contains("layer 2 `dropout 1.5`") && msg.contains("[0, 1)"),
        "{msg}"
    );
    let msg = error("maxpool 3 2 pad=2 | flatten");
    assert!(msg.contains("more than half"), "{msg}");
    let msg = error("conv 8 3 | res(conv 8 3 pad=1 | bn | relu ; ) | flatten");
    assert!(msg.contains("shortcut after `;` is empty"), "{msg}");
    let msg = error("conv 8 3 bias=maybe | flatten");
    assert!(msg.contains("bias must be true or false"), "{msg}");
    let msg = error("flatten | gap | dense 4");
    assert!(
        msg.contains("layer 1 `gap`") && msg.contains("already flat"),
        "{msg}"
    );
}
