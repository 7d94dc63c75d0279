//! Listing adapters and choosing one.
//!
//! Choice: `SIAMESE_ADAPTER=<substring>` picks the first adapter whose name contains it
//! (case-insensitive); otherwise the best device type wins (discrete > integrated > virtual >
//! CPU), so a real GPU is preferred over lavapipe when both are present.

use crate::error::{Error, Result};

/// What a user needs to know about an adapter to pick one.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterSummary {
    pub(crate) fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        AdapterSummary {
            name: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
        }
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {} {})",
            self.name, self.backend, self.device_type, self.driver, self.driver_info
        )
    }
}

/// Backends we run on by default: the native compute APIs. `WGPU_BACKEND` overrides.
pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see, in the order [`choose`] ranks them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    ranked(&instance()).iter().map(AdapterSummary::of).collect()
}

fn ranked(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    });
    adapters
}

/// The adapter to use: the one `requested` names (substring), else the best ranked.
pub(crate) fn choose(instance: &wgpu::Instance, requested: Option<&str>) -> Result<wgpu::Adapter> {
    let adapters = ranked(instance);
    if adapters.is_empty() {
        return Err(Error::NoAdapter);
    }
    match requested {
        None => Ok(adapters.into_iter().next().expect("checked non-empty")),
        Some(want) => {
            let needle = want.to_lowercase();
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                .ok_or(Error::AdapterNotFound {
                    requested: want.to_string(),
                    available: names,
                })
        }
    }
}
