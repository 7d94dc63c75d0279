//! WGSL sources as the pipeline cache knows them: a file, the name it is cached under, and
//! the variant (f32 as written, or with some element types in f16) it is compiled as.

/// A WGSL source file, the name it is cached under, and the variant it is compiled as.
#[derive(Debug, Clone, Copy)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
    pub f16: F16Variant,
}

/// Which of a shader's element types are f16 (mixed precision). A shader written for both
/// declares each switchable element type as `alias NAME = f32;`, converts what it loads
/// from such a buffer with `f32(…)` and what it stores with `NAME(…)`; the variant
/// rewrites the named aliases to f16 and, with `texels`, its rgba32float storage textures
/// to rgba16float. The default variant is the f32 source as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct F16Variant {
    pub aliases: &'static [&'static str],
    pub texels: bool,
}

impl F16Variant {
    pub fn is_f32(self) -> bool {
        self.aliases.is_empty() && !self.texels
    }
}

impl Shader {
    pub const fn new(name: &'static str, source: &'static str) -> Shader {
        Shader {
            name,
            source,
            f16: F16Variant {
                aliases: &[],
                texels: false,
            },
        }
    }

    /// This shader with the element types named by `variant` in f16.
    pub const fn with_f16(self, variant: F16Variant) -> Shader {
        Shader {
            f16: variant,
            ..self
        }
    }

    /// The WGSL source of this variant: the file as written for f32, else with
    /// `enable f16;` first and the variant's aliases and storage textures rewritten.
    pub fn wgsl(&self) -> std::result::Result<std::borrow::Cow<'static, str>, String> {
        if self.f16.is_f32() {
            return Ok(self.source.into());
        }
        let mut src = format!("enable f16;\n{}", self.source);
        for alias in self.f16.aliases {
            let decl = format!("alias {alias} = f32;");
            if !src.contains(&decl) {
                return Err(format!("{} declares no `{decl}`", self.name));
            }
            src = src.replace(&decl, &format!("alias {alias} = f16;"));
        }
        if self.f16.texels {
            if !src.contains("texture_storage_2d<rgba32float") {
                return Err(format!("{} writes no rgba32float texels", self.name));
            }
            src = src.replace(
                "texture_storage_2d<rgba32float",
                "texture_storage_2d<rgba16float",
            );
        }
        Ok(src.into())
    }
}
