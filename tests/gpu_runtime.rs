//! The runtime around the kernels: adapter choice, buffers and their limits, readback,
//! the pipeline cache, in-place parameter updates and one-submission recording.

use std::sync::Arc;

use siamese_gpu::gpu::{grid_1d, list_adapters};
use siamese_gpu::ops::dense;
use siamese_gpu::{DType, Error, Gpu};

fn gpu() -> Gpu {
    Gpu::new().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_adapter_is_listed_and_chosen_by_name() {
    let adapters = list_adapters();
    assert!(!adapters.is_empty(), "no adapter listed");
    let first = &adapters[0].name;
    // A substring of the name, in another case, picks the same adapter.
    let needle = first[..first.len().min(4)].to_uppercase();
    assert_eq!(
        &Gpu::with_adapter(Some(&needle)).unwrap().adapter().name,
        first
    );
}

#[test]
fn an_unknown_adapter_name_lists_the_available_ones() {
    let err = Gpu::with_adapter(Some("no-such-adapter-anywhere"))
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::AdapterNotFound { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-adapter-anywhere") && msg.contains(&list_adapters()[0].name),
        "{msg}"
    );
}

#[test]
fn the_no_adapter_message_says_what_to_install() {
    assert!(
        Error::NoAdapter
            .to_string()
            .contains("apt-get install mesa-vulkan-drivers")
    );
}

#[test]
fn upload_and_readback_round_trip() {
    let gpu = gpu();
    let data: Vec<f32> = (0..1001).map(|i| i as f32 * 0.5 - 7.0).collect();
    let t = gpu.upload_f32(&data, &[7, 143]).unwrap();
    assert_eq!(gpu.read_f32(&t).unwrap(), data);
    let codes: Vec<u32> = (0..9).map(|i| i * 3).collect();
    let u = gpu.upload_u32(&codes, &[9]).unwrap();
    assert_eq!(gpu.read_u32(&u).unwrap(), codes);
    assert!(
        gpu.read_u32(&t).is_err(),
        "reading f32 as u32 must be refused"
    );
    assert!(
        gpu.upload_f32(&data, &[1000]).is_err(),
        "1001 values do not fill [1000]"
    );
}

#[test]
fn a_buffer_over_the_binding_limit_is_refused_with_the_limit() {
    let gpu = gpu();
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let elems = (limit / 4 + 1) as usize;
    let err = gpu.zeros(&[elems], DType::F32).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&limit.to_string()) && msg.contains("smaller batch"),
        "{msg}"
    );
}

#[test]
fn pipelines_are_compiled_once_per_entry_and_constants() {
    let gpu = gpu();
    let a = gpu
        .pipeline(
            &dense::SHADER,
            "dense_forward",
            &[("WG_COLS", 8.0), ("WG_ROWS", 8.0)],
        )
        .unwrap();
    let b = gpu
        .pipeline(
            &dense::SHADER,
            "dense_forward",
            &[("WG_COLS", 8.0), ("WG_ROWS", 8.0)],
        )
        .unwrap();
    let c = gpu
        .pipeline(
            &dense::SHADER,
            "dense_forward",
            &[("WG_COLS", 4.0), ("WG_ROWS", 8.0)],
        )
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b), "same key must reuse the pipeline");
    assert!(
        !Arc::ptr_eq(&a, &c),
        "other constants must compile another pipeline"
    );
    let err = gpu
        .pipeline(&dense::SHADER, "no_such_entry", &[])
        .unwrap_err();
    assert!(matches!(err, Error::Pipeline { .. }), "{err}");
}

#[test]
fn kernels_recorded_together_run_in_order_in_one_submission() {
    // y = x·wᵀ + b, then dx = y·w: the second kernel must see the first one's output.
    let gpu = gpu();
    let x = gpu.upload_f32(&[1.0, 2.0], &[1, 2]).unwrap();
    let w = gpu
        .upload_f32(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2])
        .unwrap();
    let b = gpu.upload_f32(&[0.0, 0.0, 1.0], &[3]).unwrap();
    let y = gpu.zeros(&[1, 3], DType::F32).unwrap();
    let dx = gpu.zeros(&[1, 2], DType::F32).unwrap();
    let fwd = dense::forward(&gpu, &x, &w, &b, &y).unwrap();
    let back = dense::grad_input(&gpu, &y, &w, &dx).unwrap();
    let mut rec = gpu.recorder();
    rec.record(&fwd);
    rec.record(&back);
    rec.submit();
    // y = [1, 2, 4]; dx = [1 + 4, 2 + 4].
    assert_eq!(gpu.read_f32(&y).unwrap(), vec![1.0, 2.0, 4.0]);
    assert_eq!(gpu.read_f32(&dx).unwrap(), vec![5.0, 6.0]);
    // A cleared tensor reads back as zeros.
    let mut rec = gpu.recorder();
    rec.clear(&dx);
    rec.submit();
    assert_eq!(gpu.read_f32(&dx).unwrap(), vec![0.0, 0.0]);
}

#[test]
fn views_and_reshapes_share_the_buffer() {
    let gpu = gpu();
    let t = gpu
        .upload_f32(&(0..512).map(|i| i as f32).collect::<Vec<_>>(), &[512])
        .unwrap();
    // 64 f32 = 256 bytes: the usual storage offset alignment.
    let v = t.view(256, &[4, 64]).unwrap();
    assert_eq!(gpu.read_f32(&v).unwrap()[..3], [256.0, 257.0, 258.0]);
    assert!(
        t.view(500, &[13]).is_none(),
        "a view past the end must be refused"
    );
    assert_eq!(t.reshaped(&[8, 64]).unwrap().shape(), &[8, 64]);
    assert!(t.reshaped(&[3, 3]).is_none());
}

#[test]
fn set_params_changes_a_built_kernel() {
    // dense_grad_bias reads `rows` from its uniform: shrinking it to 1 sums only row 0.
    let gpu = gpu();
    let dy = gpu.upload_f32(&[1.0, 2.0, 10.0, 20.0], &[2, 2]).unwrap();
    let db = gpu.zeros(&[2], DType::F32).unwrap();
    let k = dense::grad_bias(&gpu, &dy, &db).unwrap();
    gpu.run(&[&k]);
    assert_eq!(gpu.read_f32(&db).unwrap(), vec![11.0, 22.0]);
    let params: [u32; 8] = [1, 2, 0, 0, 0, 0, 0, 0];
    k.set_params(&gpu, &params);
    gpu.run(&[&k]);
    assert_eq!(gpu.read_f32(&db).unwrap(), vec![1.0, 2.0]);
}

#[test]
fn large_launches_fold_into_two_dimensions() {
    assert_eq!(grid_1d(0), [1, 1, 1]);
    assert_eq!(grid_1d(65_535), [65_535, 1, 1]);
    let [x, y, z] = grid_1d(65_536);
    assert!(x <= 65_535 && y == 2 && z == 1 && x * y >= 65_536);
    let [x, y, _] = grid_1d(10_000_000);
    assert!(x <= 65_535 && (x as u64 * y as u64) >= 10_000_000);
}

#[test]
fn a_launch_over_the_workgroup_limit_is_refused() {
    let gpu = gpu();
    let t = gpu.zeros(&[4], DType::F32).unwrap();
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    let params = [0u32; 8];
    let err = gpu.dispatch(
        &dense::SHADER,
        "dense_grad_bias",
        &[],
        &params,
        &[(1, &t), (4, &t)],
        [max + 1, 1, 1],
    );
    let msg = err.unwrap_err().to_string();
    assert!(
        msg.contains("smaller batch") && msg.contains(&max.to_string()),
        "{msg}"
    );
}

#[test]
fn the_profiler_times_each_recorded_kernel() {
    use siamese_gpu::gpu::Profiler;
    let gpu = gpu();
    let Some(mut profiler) = Profiler::new(&gpu, 4) else {
        eprintln!(
            "no timestamp queries on {}: nothing to check",
            gpu.adapter()
        );
        return;
    };
    let x = gpu.upload_f32(&[1.0; 64], &[8, 8]).unwrap();
    let w = gpu.upload_f32(&[0.5; 32], &[4, 8]).unwrap();
    let b = gpu.zeros(&[4], DType::F32).unwrap();
    let y = gpu.zeros(&[8, 4], DType::F32).unwrap();
    let db = gpu.zeros(&[4], DType::F32).unwrap();
    let fwd = dense::forward(&gpu, &x, &w, &b, &y).unwrap();
    let bias = dense::grad_bias(&gpu, &y, &db).unwrap();
    let mut rec = gpu.recorder();
    rec.record_timed(&fwd, &mut profiler);
    rec.record_timed(&bias, &mut profiler);
    rec.resolve(&profiler);
    rec.submit();
    let times = profiler.read(&gpu).unwrap();
    // One entry per kernel, named by its entry point, in recording order; durations are
    // finite and non-negative (their values are the benchmark's business, not a test's).
    assert_eq!(
        times.iter().map(|t| t.0).collect::<Vec<_>>(),
        ["dense_forward", "dense_grad_bias"]
    );
    assert!(
        times.iter().all(|t| t.1.is_finite() && t.1 >= 0.0),
        "{times:?}"
    );
    // The kernels still ran: y = 8·0.5 = 4 everywhere.
    assert_eq!(gpu.read_f32(&y).unwrap(), vec![4.0; 32]);
}
