//! `siamese devices`: the adapters wgpu sees, and what the chosen one offers.

use siamese_gpu::error::Result;
use siamese_gpu::gpu::list_adapters;
use siamese_gpu::{Gpu, TexelOp};

pub fn run() -> Result<()> {
    for (i, a) in list_adapters().iter().enumerate() {
        println!("{i}: {a}");
    }
    let gpu = Gpu::new()?;
    let limits = gpu.limits();
    println!("chosen: {}", gpu.adapter());
    println!(
        "  max storage binding {} MiB, max buffer {} MiB, max workgroups per dimension {}, \
         workgroup storage {} KiB, timestamp queries {}, f16 shaders {}",
        limits.max_storage_buffer_binding_size >> 20,
        limits.max_buffer_size >> 20,
        limits.max_compute_workgroups_per_dimension,
        limits.max_compute_workgroup_storage_size >> 10,
        gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY),
        gpu.features().contains(wgpu::Features::SHADER_F16),
    );
    let policy = gpu.policy();
    let side = |op| {
        if policy.takes_texels(op) {
            "texels"
        } else {
            "storage"
        }
    };
    println!(
        "  kernels ({}; SIAMESE_KERNELS=auto|storage|texels): conv forward {}, conv grad_input {}, \
         conv grad_weight {}, dense {}, pairwise distance {}",
        gpu.kernel_path().name(),
        side(TexelOp::ConvForward),
        side(TexelOp::ConvGradInput),
        side(TexelOp::ConvGradWeight),
        side(TexelOp::Dense),
        side(TexelOp::PairwiseDistance),
    );
    Ok(())
}
