//! [`Gpu`]: the device, its queue, the pipeline cache, and buffer upload/readback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::adapter::{self, AdapterSummary};
use super::kernel::{Dispatch, Uniform};
use super::policy::{AdapterKind, KernelPath, Policy};
use super::recorder::Recorder;
use super::{DType, Kernel, TEXEL_ROW, Tensor, Texels};
use super::{F16Variant, Shader};
use crate::error::{Error, Result};

/// Pipelines are keyed by shader and its f16 variant, entry point and override constants
/// (as bit patterns).
type PipelineKey = (ModuleKey, &'static str, Vec<(&'static str, u64)>);
type ModuleKey = (&'static str, F16Variant);

/// An open device on the chosen adapter, with the caches every launcher shares.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    adapter_kind: AdapterKind,
    limits: wgpu::Limits,
    features: wgpu::Features,
    modules: Mutex<HashMap<ModuleKey, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    kernel_path: KernelPath,
}

impl Gpu {
    /// Opens the adapter named by `SIAMESE_ADAPTER` (a name substring), else the best one;
    /// `SIAMESE_KERNELS=auto|storage|texels` picks the matmul-shaped kernels (default auto,
    /// see [`KernelPath`]).
    pub fn new() -> Result<Gpu> {
        let requested = std::env::var("SIAMESE_ADAPTER")
            .ok()
            .filter(|s| !s.is_empty());
        let mut gpu = Gpu::with_adapter(requested.as_deref())?;
        if let Ok(name) = std::env::var("SIAMESE_KERNELS")
            && !name.is_empty()
        {
            let path = KernelPath::parse(&name).ok_or_else(|| {
                Error::Config(format!(
                    "SIAMESE_KERNELS must be `auto`, `storage` or `texels`, got `{name}`"
                ))
            })?;
            gpu.set_kernel_path(path);
        }
        Ok(gpu)
    }

    /// Opens the first adapter whose name contains `requested`, or the best one if `None`.
    pub fn with_adapter(requested: Option<&str>) -> Result<Gpu> {
        let instance = adapter::instance();
        let adapter = adapter::choose(&instance, requested)?;
        // Ask for everything the adapter offers: the largest batches need the largest
        // storage bindings, and lavapipe's are smaller than a discrete GPU's.
        let limits = adapter.limits();
        let wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("siamese-gpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::DeviceRequest(e.to_string()))?;
        Ok(Gpu {
            device,
            queue,
            summary: AdapterSummary::of(&adapter),
            adapter_kind: AdapterKind::of(adapter.get_info().device_type),
            limits,
            features,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            kernel_path: KernelPath::Auto,
        })
    }

    /// The kernel path tapes built on this device follow.
    pub fn kernel_path(&self) -> KernelPath {
        self.kernel_path
    }

    /// What the kernel rules know of the adapter.
    pub fn adapter_kind(&self) -> AdapterKind {
        self.adapter_kind
    }

    /// The kernel rules for tapes built on this device (see [`Policy`]).
    pub fn policy(&self) -> Policy {
        Policy::new(self.kernel_path, self.adapter_kind)
    }

    /// Chooses the kernel path for tapes built from now on.
    pub fn set_kernel_path(&mut self, path: KernelPath) {
        self.kernel_path = path;
    }

    /// Name, backend, type and driver of the adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// Plans every buffer, and splits resident datasets into shards, under `bytes` per
    /// storage binding (kept at most the device's own limit): tests cross the limit on small
    /// data this way, and a caller can leave headroom.
    pub fn limit_storage_bindings(&mut self, bytes: u64) {
        let limit = &mut self.limits.max_storage_buffer_binding_size;
        *limit = (*limit).min(bytes);
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// Whether shaders may use f16 (the adapter offers SHADER_F16): what mixed precision needs.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The compiled pipeline for (shader, entry, constants), built on first use.
    pub fn pipeline(
        &self,
        shader: &Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key: PipelineKey = (
            (shader.name, shader.f16),
            entry,
            constants.iter().map(|&(k, v)| (k, v.to_bits())).collect(),
        );
        if let Some(p) = self
            .pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .get(&key)
        {
            return Ok(p.clone());
        }
        let pipeline_error = |message: String| Error::Pipeline {
            shader: shader.name,
            entry,
            message,
        };
        let module = {
            let mut modules = self.modules.lock().expect("shader cache poisoned");
            match modules.get(&key.0) {
                Some(m) => m.clone(),
                None => {
                    if !shader.f16.is_f32() && !self.has_f16() {
                        return Err(pipeline_error(format!(
                            "this f16 variant needs 16-bit float shaders (wgpu's SHADER_F16), \
                             which {} does not offer; train with --precision f32",
                            self.summary.name
                        )));
                    }
                    let source = shader.wgsl().map_err(pipeline_error)?;
                    let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
                    let m = self
                        .device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(shader.name),
                            source: wgpu::ShaderSource::Wgsl(source),
                        });
                    if let Some(e) = pollster::block_on(scope.pop()) {
                        return Err(pipeline_error(e.to_string()));
                    }
                    modules.insert(key.0, m.clone());
                    m
                }
            }
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(pipeline_error(e.to_string()));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Prepares one dispatch of `entry`: `params` is bound at binding 0 as a uniform and each
    /// `(binding, tensor)` as a storage buffer. Bindings must be exactly those the entry uses.
    pub fn dispatch<P: Uniform>(
        &self,
        shader: &Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        params: &P,
        bindings: &[(u32, &Tensor)],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        self.dispatch_with_texels(shader, entry, constants, params, bindings, &[], workgroups)
    }

    /// [`dispatch`](Self::dispatch) with texel arrays too, each bound as the entry declares
    /// it (sampled `texture_2d<f32>` or write-only `texture_storage_2d<rgba32float, write>`).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_with_texels<P: Uniform>(
        &self,
        shader: &Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        params: &P,
        bindings: &[(u32, &Tensor)],
        texels: &[(u32, &Texels)],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&g| g > max) {
            return Err(Error::Shape {
                op: entry,
                detail: format!(
                    "the launch needs {workgroups:?} workgroups, over this device's {max} per \
                     dimension; use a smaller batch"
                ),
            });
        }
        let pipeline = self.pipeline(shader, entry, constants)?;
        // Uniform buffers bind whole 16-byte rows.
        let mut bytes = bytemuck::bytes_of(params).to_vec();
        bytes.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(entry),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(bindings.iter().map(|&(binding, t)| wgpu::BindGroupEntry {
            binding,
            resource: t.binding(),
        }));
        entries.extend(texels.iter().map(|&(binding, t)| wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::TextureView(&t.view),
        }));
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Pipeline {
                shader: shader.name,
                entry,
                message: e.to_string(),
            });
        }
        Ok(Dispatch {
            entry,
            pipeline,
            bind_group,
            uniform,
            workgroups,
        })
    }

    fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        let binding_limit = self.limits.max_storage_buffer_binding_size;
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                what: what.to_string(),
                bytes,
                limit: self.limits.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        if bytes > binding_limit {
            return Err(Error::TooLarge {
                what: what.to_string(),
                bytes,
                limit: binding_limit,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(())
    }

    fn storage_buffer(
        &self,
        shape: &[usize],
        dtype: DType,
        contents: Option<&[u8]>,
    ) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let bytes = ((count as u64 * dtype.size_bytes()).div_ceil(4) * 4).max(4);
        self.check_size(&format!("a {dtype:?} tensor of shape {shape:?}"), bytes)?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = match contents {
            Some(data) => {
                let mut padded = data.to_vec();
                padded.resize(bytes as usize, 0);
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: &padded,
                        usage,
                    })
            }
            None => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage,
                mapped_at_creation: false,
            }),
        };
        Ok(Tensor::new(Arc::new(buffer), 0, shape, dtype))
    }

    /// An array of `len` texels (see [`Texels`]), zero until a kernel writes it (wgpu
    /// zero-initialises textures).
    pub fn texels(&self, len: usize) -> Result<Texels> {
        self.texels_of(len, DType::F32)
    }

    /// [`texels`](Self::texels) of f32 (rgba32float) or f16 (rgba16float) components.
    pub fn texels_of(&self, len: usize, dtype: DType) -> Result<Texels> {
        let format = match dtype {
            DType::F32 => wgpu::TextureFormat::Rgba32Float,
            DType::F16 => wgpu::TextureFormat::Rgba16Float,
            DType::U32 => {
                return Err(Error::Shape {
                    op: "texels",
                    detail: "texels hold f32 or f16 components, not u32".into(),
                });
            }
        };
        let texel_bytes = 4 * dtype.size_bytes();
        let rows = len.div_ceil(TEXEL_ROW).max(1);
        let max = self.limits.max_texture_dimension_2d as usize;
        if rows > max {
            return Err(Error::TooLarge {
                what: format!("a texel array of {len} texels ({rows} rows of {TEXEL_ROW})"),
                bytes: len as u64 * texel_bytes,
                limit: max as u64 * TEXEL_ROW as u64 * texel_bytes,
                limit_name: "max_texture_dimension_2d",
            });
        }
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("texels"),
            size: wgpu::Extent3d {
                width: TEXEL_ROW as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::STORAGE_BINDING
                | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        Ok(Texels::new(texture, len, dtype))
    }

    /// Reads a texel array back as `4·len` f32 (waits for all submitted work).
    pub fn read_texels(&self, texels: &Texels) -> Result<Vec<f32>> {
        let row_bytes = (TEXEL_ROW as u64 * 4 * texels.dtype().size_bytes()) as u32;
        let size = row_bytes as u64 * texels.rows() as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("texel readback"),
            size,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_texture_to_buffer(
            texels.texture.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &staging,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row_bytes),
                    rows_per_image: None,
                },
            },
            texels.texture.size(),
        );
        self.queue.submit([encoder.finish()]);
        let dtype = texels.dtype();
        let floats = (size / dtype.size_bytes()) as usize;
        let tensor = Tensor::new(Arc::new(staging), 0, &[floats], dtype);
        let mut all = self.read_floats(&tensor)?;
        all.truncate(texels.len() * 4);
        Ok(all)
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.storage_buffer(shape, dtype, None)
    }

    /// Uploads f32 data as a tensor of `shape`.
    pub fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        check_len("upload_f32", data.len(), shape)?;
        self.storage_buffer(shape, DType::F32, Some(bytemuck::cast_slice(data)))
    }

    /// Uploads f32 data rounded to f16 (to nearest even, by `half`) as an f16 tensor.
    pub fn upload_f16(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        check_len("upload_f16", data.len(), shape)?;
        let halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
        self.storage_buffer(shape, DType::F16, Some(bytemuck::cast_slice(&halves)))
    }

    /// Uploads f32 data as a tensor of `shape` and float `dtype` (f16 rounds, as
    /// [`upload_f16`](Self::upload_f16)).
    pub fn upload_floats(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        match dtype {
            DType::F16 => self.upload_f16(data, shape),
            _ => self.upload_f32(data, shape),
        }
    }

    /// Uploads u32 data as a tensor of `shape`.
    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        check_len("upload_u32", data.len(), shape)?;
        self.storage_buffer(shape, DType::U32, Some(bytemuck::cast_slice(data)))
    }

    /// Overwrites a tensor's contents from the host (queued before the next submission).
    pub fn write_f32(&self, tensor: &Tensor, data: &[f32]) -> Result<()> {
        if tensor.dtype() != DType::F32 || data.len() != tensor.len() {
            return Err(Error::Shape {
                op: "write_f32",
                detail: format!(
                    "{} values for a {:?} tensor of shape {:?}",
                    data.len(),
                    tensor.dtype(),
                    tensor.shape()
                ),
            });
        }
        self.queue
            .write_buffer(&tensor.buffer, tensor.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Overwrites a u32 tensor's contents from the host (queued before the next submission):
    /// how a training step sends its batch indices and labels.
    pub fn write_u32(&self, tensor: &Tensor, data: &[u32]) -> Result<()> {
        if tensor.dtype() != DType::U32 || data.len() != tensor.len() {
            return Err(Error::Shape {
                op: "write_u32",
                detail: format!(
                    "{} values for a {:?} tensor of shape {:?}",
                    data.len(),
                    tensor.dtype(),
                    tensor.shape()
                ),
            });
        }
        self.queue
            .write_buffer(&tensor.buffer, tensor.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// A recorder: kernels recorded into it go into one command buffer, submitted once.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder::new(self)
    }

    /// Records `kernels` in order into one command buffer and submits it.
    pub fn run(&self, kernels: &[&Kernel]) {
        let mut rec = self.recorder();
        for k in kernels {
            rec.record(k);
        }
        rec.submit();
    }

    fn read_bytes(&self, tensor: &Tensor) -> Result<Vec<u8>> {
        let size = tensor.byte_size().max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&tensor.buffer, tensor.offset, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::Readback(e.to_string()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Reads an f32 tensor back (waits for all submitted work).
    pub fn read_f32(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        expect_dtype("read_f32", tensor, DType::F32)?;
        let bytes = self.read_bytes(tensor)?;
        Ok(bytemuck::cast_slice::<u8, f32>(&bytes)[..tensor.len()].to_vec())
    }

    /// Reads an f16 tensor back, widened to f32 (waits for all submitted work).
    pub fn read_f16(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        expect_dtype("read_f16", tensor, DType::F16)?;
        let bytes = self.read_bytes(tensor)?;
        Ok(
            bytemuck::cast_slice::<u8, half::f16>(&bytes)[..tensor.len()]
                .iter()
                .map(|h| h.to_f32())
                .collect(),
        )
    }

    /// Reads an f32 or f16 tensor back as f32 (waits for all submitted work).
    pub fn read_floats(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        match tensor.dtype() {
            DType::F16 => self.read_f16(tensor),
            _ => self.read_f32(tensor),
        }
    }

    /// Reads a u32 tensor back (waits for all submitted work).
    pub fn read_u32(&self, tensor: &Tensor) -> Result<Vec<u32>> {
        expect_dtype("read_u32", tensor, DType::U32)?;
        let bytes = self.read_bytes(tensor)?;
        Ok(bytemuck::cast_slice::<u8, u32>(&bytes)[..tensor.len()].to_vec())
    }

    /// Blocks until every submitted command buffer has finished.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Readback(e.to_string()))
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let want: usize = shape.iter().product();
    if len != want {
        return Err(Error::Shape {
            op,
            detail: format!("{len} values do not fill shape {shape:?} ({want} elements)"),
        });
    }
    Ok(())
}

fn expect_dtype(op: &'static str, tensor: &Tensor, dtype: DType) -> Result<()> {
    if tensor.dtype() != dtype {
        return Err(Error::Shape {
            op,
            detail: format!("expected a {dtype:?} tensor, got {:?}", tensor.dtype()),
        });
    }
    Ok(())
}
