//! Kernel benchmark: GFLOP/s of the dense and conv2d kernels, forward and both backwards, at
//! the reference network's shapes (conv 1→32 5×5 on 28×28, conv 32→64 3×3 on 12×12, dense
//! 1600→128) and a ResNet's (3×3 padding 1 at stride 2, 16→32 on 28×28 and 32→64 on 14×14;
//! the 1×1 projection 16→32 at stride 2 on 28×28; 3×3 padding 1 at stride 1, 32→32 on
//! 14×14) for batches of 32, 256 and 1024 images, beside the adapter's FMA peak.
//!
//! Where the adapter has f16 shaders every kernel is also timed on f16 operands (mixed
//! precision: f16 activations and weights, f32 accumulation and weight gradients), as
//! `<op>_f16`, beside its f32 figure. The single-channel layer is also timed on
//! `conv2d_forward_tex_images4` (four images per texel), the forward the tape takes for it.
//!
//! `cargo bench --bench kernels`; `SIAMESE_BENCH_BATCHES=32,256` picks the batches.
//! Each figure is one line for people and one JSON object for tools. Times are wall-clock
//! per submission (submit + wait), after a warm-up run, over at least 2 runs and 1 second.
//! Each kernel is what a layer's plan records for that product alone, its operands'
//! packing included, on the kernels named (x as the texel forward packed it is not timed
//! again for grad_weight).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use siamese_gpu::gpu::{Conv2dKernels, ConvForward, Operands, Shader};
use siamese_gpu::ops::conv2d::{self, Conv2dGrads, Conv2dPlan, Conv2dTensors};
use siamese_gpu::ops::dense::{self, DenseGrads, DenseTensors};
use siamese_gpu::vocab::Conv2dGeometry;
use siamese_gpu::{DType, Gpu, Kernel, Tensor};

const PEAK: Shader = Shader::new("fma_peak", include_str!("fma_peak.wgsl"));

fn seconds_per_run(gpu: &Gpu, kernel: &Kernel) -> f64 {
    gpu.run(&[kernel]);
    gpu.wait().expect("warm-up run");
    let (mut runs, start) = (0u32, Instant::now());
    while runs < 2 || start.elapsed() < Duration::from_secs(1) {
        gpu.run(&[kernel]);
        gpu.wait().expect("benchmark run");
        runs += 1;
    }
    start.elapsed().as_secs_f64() / runs as f64
}

fn random(gpu: &Gpu, rng: &mut StdRng, shape: &[usize], dtype: DType) -> Tensor {
    let data: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    gpu.upload_floats(&data, shape, dtype).expect("upload")
}

fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Tensor {
    gpu.zeros(shape, dtype).expect("allocate")
}

fn report(gpu: &Gpu, op: &str, layer: &str, batch: usize, flop: f64, seconds: f64, peak: f64) {
    let gflops = flop / seconds / 1e9;
    println!(
        "{op:<20} {layer:<20} batch {batch:>5}  {:>9.3} ms  {gflops:>9.2} GFLOP/s  ({:.1}% of peak)",
        seconds * 1e3,
        100.0 * gflops / peak
    );
    println!(
        "{{\"kind\":\"kernel\",\"op\":\"{op}\",\"layer\":\"{layer}\",\"batch\":{batch},\"ms\":{:.4},\"gflops\":{gflops:.3},\"peak_gflops\":{peak:.3},\"adapter\":\"{}\",\"driver\":\"{} {}\"}}",
        seconds * 1e3,
        gpu.adapter().name,
        gpu.adapter().driver,
        gpu.adapter().driver_info
    );
}

/// GFLOP/s of a register-only FMA loop: the ceiling beside which the kernels are read.
fn fma_peak(gpu: &Gpu) -> f64 {
    const INVOCATIONS: u32 = 64 * 4096;
    const ITERATIONS: u32 = 1024;
    let sink = zeros(gpu, &[INVOCATIONS as usize], DType::F32);
    let params: [u32; 4] = [ITERATIONS, 0, 0, 0];
    let dispatch = gpu
        .dispatch(
            &PEAK,
            "fma_peak",
            &[],
            &params,
            &[(1, &sink)],
            [INVOCATIONS / 64, 1, 1],
        )
        .expect("peak kernel");
    let seconds = seconds_per_run(gpu, &Kernel::single(dispatch));
    // 4 vec4 FMAs per iteration = 32 FLOP.
    INVOCATIONS as f64 * ITERATIONS as f64 * 32.0 / seconds / 1e9
}

fn main() {
    let gpu = Gpu::new().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let batches: Vec<usize> = std::env::var("SIAMESE_BENCH_BATCHES")
        .unwrap_or_else(|_| "32,256,1024".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIAMESE_BENCH_BATCHES: comma-separated batch sizes")
        })
        .collect();
    let a = gpu.adapter();
    println!("adapter: {}", a);
    let peak = fma_peak(&gpu);
    println!("FMA peak: {peak:.2} GFLOP/s");
    println!(
        "{{\"kind\":\"peak\",\"gflops\":{peak:.3},\"adapter\":\"{}\",\"backend\":\"{}\",\"driver\":\"{} {}\"}}",
        a.name, a.backend, a.driver, a.driver_info
    );

    let mut dtypes = vec![DType::F32];
    if gpu.has_f16() {
        dtypes.push(DType::F16);
    }
    let mut rng = StdRng::seed_from_u64(0);
    for &batch in &batches {
        for &dt in &dtypes {
            bench_batch(&gpu, &mut rng, batch, dt, peak);
        }
    }
}

/// The gradient kernels of `plan`, after dy's packing where only texel kernels read it.
fn backward_of(plan: Conv2dPlan) -> Kernel {
    let pack = plan.dy_texels.map(|dyt| dyt.pack().clone());
    Kernel::chain(pack.into_iter().chain(plan.backward))
}

/// Every kernel at `batch` on operands of `dt` (weight gradients always f32).
fn bench_batch(gpu: &Gpu, rng: &mut StdRng, batch: usize, dt: DType, peak: f64) {
    let suffix = if dt == DType::F16 { "_f16" } else { "" };
    bench_dense(gpu, rng, batch, dt, suffix, peak);
    let conv = |c, h, o, k, stride, pad| Conv2dGeometry {
        n: batch,
        c,
        h,
        w: h,
        o,
        kh: k,
        kw: k,
        stride,
        pad,
    };
    for (layer, g) in [
        ("conv 1>32 5x5", conv(1, 28, 32, 5, 1, 0)),
        ("conv 32>64 3x3", conv(32, 12, 64, 3, 1, 0)),
        // A ResNet's downsampling on 28×28 and 14×14 inputs: 3×3 with padding 1 at stride 2,
        // its 1×1 projection shortcut at stride 2, and a 3×3 with padding 1 at stride 1.
        ("conv 16>32 3x3 s2 28", conv(16, 28, 32, 3, 2, 1)),
        ("conv 32>64 3x3 s2 14", conv(32, 14, 64, 3, 2, 1)),
        ("conv 16>32 1x1 s2 28", conv(16, 28, 32, 1, 2, 0)),
        ("conv 32>32 3x3 p1 14", conv(32, 14, 32, 3, 1, 1)),
    ] {
        bench_conv(gpu, rng, layer, &g, dt, suffix, peak);
    }
}

/// The dense layer's kernels, 1600 → 128.
fn bench_dense(gpu: &Gpu, rng: &mut StdRng, batch: usize, dt: DType, suffix: &str, peak: f64) {
    let (k, m) = (1600, 128);
    let (x, w, b) = (
        random(gpu, rng, &[batch, k], dt),
        random(gpu, rng, &[m, k], dt),
        random(gpu, rng, &[m], dt),
    );
    let (y, dy) = (
        zeros(gpu, &[batch, m], dt),
        random(gpu, rng, &[batch, m], dt),
    );
    let (dx, dw) = (zeros(gpu, &[batch, k], dt), zeros(gpu, &[m, k], DType::F32));
    let flop = 2.0 * (batch * k * m) as f64;
    let layer = "dense 1600>128";
    let tensors = DenseTensors {
        x: &x,
        w: &w,
        b: &b,
        y: &y,
    };
    let only = |dx, dw| DenseGrads {
        dy: &dy,
        dx,
        dw,
        db: None,
    };
    let mut runs = Vec::new();
    for (path, operands) in [("", Operands::Storage), ("_tex", Operands::Texels)] {
        for (product, grads) in [
            ("forward", None),
            ("grad_input", Some(only(Some(&dx), None))),
            ("grad_weight", Some(only(None, Some(&dw)))),
        ] {
            let kernel =
                dense::plan(gpu, &tensors, grads.as_ref(), operands).map(|plan| match grads {
                    None => plan.forward,
                    Some(_) => Kernel::chain(plan.backward),
                });
            runs.push((format!("dense_{product}{path}"), kernel));
        }
    }
    for (op, kernel) in runs {
        report(
            gpu,
            &format!("{op}{suffix}"),
            layer,
            batch,
            flop,
            seconds_per_run(gpu, &kernel.expect(&op)),
            peak,
        );
    }
}

/// The convolution `g`'s kernels.
fn bench_conv(
    gpu: &Gpu,
    rng: &mut StdRng,
    layer: &str,
    g: &Conv2dGeometry,
    dt: DType,
    suffix: &str,
    peak: f64,
) {
    let x = random(gpu, rng, &g.input_shape(), dt);
    let w = random(gpu, rng, &g.weight_shape(), dt);
    let b = random(gpu, rng, &[g.o], dt);
    let (y, dy) = (
        zeros(gpu, &g.output_shape(), dt),
        random(gpu, rng, &g.output_shape(), dt),
    );
    let (dx, dw) = (
        zeros(gpu, &g.input_shape(), dt),
        zeros(gpu, &g.weight_shape(), DType::F32),
    );
    let flop = 2.0 * (g.n * g.o * g.out_h() * g.out_w() * g.c * g.kh * g.kw) as f64;
    let tensors = Conv2dTensors {
        x: &x,
        w: &w,
        b: &b,
        y: &y,
        stride: g.stride,
        pad: g.pad,
    };
    let only = |dx, dw| Conv2dGrads {
        dy: &dy,
        dx,
        dw,
        db: None,
    };
    let (input, weight) = (only(Some(&dx), None), only(None, Some(&dw)));
    let on = |forward, grad_input, grad_weight| Conv2dKernels {
        forward,
        grad_input,
        grad_weight,
    };
    let (s, t) = (Operands::Storage, Operands::Texels);
    let storage = Conv2dKernels::STORAGE;
    let mut runs = vec![
        ("conv2d_forward", storage, None),
        ("conv2d_grad_input", storage, Some(&input)),
        ("conv2d_grad_weight", storage, Some(&weight)),
        ("conv2d_forward_tex", on(ConvForward::Texels, s, s), None),
        (
            "conv2d_grad_input_tex",
            on(ConvForward::Storage, t, s),
            Some(&input),
        ),
        (
            "conv2d_grad_weight_tex",
            on(ConvForward::Texels, s, t),
            Some(&weight),
        ),
    ];
    if g.images_in_lanes() {
        let images4 = on(ConvForward::ImagesInLanes, s, s);
        runs.push(("conv2d_forward_tex_images4", images4, None));
    }
    for (op, kernels, grads) in runs {
        let plan = conv2d::plan(gpu, &tensors, grads, kernels).expect(op);
        let kernel = match grads {
            None => plan.forward,
            // The forward once first: the texel grad_weight reads x as it packed it.
            Some(_) => {
                gpu.run(&[&plan.forward]);
                backward_of(plan)
            }
        };
        report(
            gpu,
            &format!("{op}{suffix}"),
            layer,
            g.n,
            flop,
            seconds_per_run(gpu, &kernel),
            peak,
        );
    }
}
