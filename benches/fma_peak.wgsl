// fma_peak.wgsl — the adapter's arithmetic ceiling: each invocation runs a long chain of
// independent vec4 FMAs on registers and stores one value, so memory costs nothing and the
// figure is the FMA throughput a kernel could reach at best. 8 FLOP per vec4 FMA.

struct PeakParams { iterations: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: PeakParams;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>;

@compute @workgroup_size(64)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>) {
    let seed = f32(gid.x) * 1e-7;
    var a = vec4<f32>(seed, seed + 1.0, seed + 2.0, seed + 3.0);
    var b = a + 0.5;
    var c = a + 0.25;
    var d = a + 0.125;
    let m = vec4<f32>(0.9999);
    let k = vec4<f32>(1e-4);
    for (var i = 0u; i < p.iterations; i++) {
        a = fma(a, m, k);
        b = fma(b, m, k);
        c = fma(c, m, k);
        d = fma(d, m, k);
    }
    sink[gid.x] = dot(a + b + c + d, vec4<f32>(1.0));
}
