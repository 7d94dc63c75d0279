//! Lists the GPU adapters wgpu can see, in the order they are preferred, and opens the one
//! that would be chosen (`SIAMESE_ADAPTER=<name substring>` overrides the choice).
//!
//! `cargo run --release --example devices`

use siamese_gpu::Gpu;
use siamese_gpu::gpu::list_adapters;

fn main() {
    let adapters = list_adapters();
    for (i, a) in adapters.iter().enumerate() {
        println!("{i}: {a}");
    }
    match Gpu::new() {
        Ok(gpu) => {
            let limits = gpu.limits();
            println!("chosen: {}", gpu.adapter());
            println!(
                "  max storage binding {} MiB, max buffer {} MiB, max workgroup storage {} KiB, features {:?}",
                limits.max_storage_buffer_binding_size >> 20,
                limits.max_buffer_size >> 20,
                limits.max_compute_workgroup_storage_size >> 10,
                gpu.features()
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
