//! Augmentation parameters: the Keras `ImageDataGenerator` set of random affine transforms
//! (rotation, shift, shear, zoom, horizontal flip) and torchvision's `RandomResizedCrop`,
//! drawn on the host per image and step.
//!
//! The images never come back to the host: each step the sampler draws one transform per
//! image of the batch and writes it as a row of a small `[M, 8]` f32 buffer, and the
//! gather kernel (`gather_images_affine` in `shaders/gather.wgsl`) resamples every output
//! pixel through it. A row is the inverse map, output pixel → source pixel, in pixel
//! coordinates (column x, row y, pixel centres at integers):
//!
//! ```text
//! sx = t[0]·x + t[1]·y + t[2]      sy = t[3]·x + t[4]·y + t[5]      (t[6], t[7] unused)
//! ```
//!
//! The matrix is Keras's (`apply_affine_transform`): rotation · shift · shear · zoom in
//! (row, column) order, mapping output to input about the image centre ((H−1)/2, (W−1)/2),
//! then the horizontal flip of the result folded in. Like Keras, `zoom` > 1 samples a larger
//! region (the object looks smaller), and `height_shift_range` moves rows,
//! `width_shift_range` columns. Shift ranges are fractions of the image size only (Keras also
//! reads values ≥ 1 as pixels; here they are refused, so that a value means one thing).
//!
//! The random resized crop (torchvision's `RandomResizedCrop(scale, ratio)`, its
//! `get_params` exactly: ten tries at an area fraction uniform in `scale` and a log-uniform
//! aspect ratio in `ratio`, else the centre crop of the nearest ratio) is applied first: the
//! crop window is resized to the whole image as torchvision's bilinear resize maps it
//! (`align_corners=False`: source = left + (x + ½)·w/W − ½), then the Keras transform and the
//! flip act on the result; both fold into the one row. Unlike torchvision, the crop is
//! taken from the stored image (already at `--image-size`), so a small crop is magnified from
//! fewer pixels than from the original photo; with `fill_mode = nearest` (the default) the
//! window's outer half pixel reads the edge, as torchvision's resize does, while `constant`
//! blends it with black. The crop draws from its own stream, so turning it on leaves the
//! Keras transforms' draws as they were.
//!
//! Off by default; when off, the trainer keeps the plain gather, bit for bit.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};
use crate::vocab::{FillMode, TRANSFORM_LEN};

/// The ranges of the random transforms, as Keras's `ImageDataGenerator` names them.
/// `Default` is off: every range 0, no flip.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augment {
    /// Rotation uniform in ±this many degrees.
    pub rotation_range: f64,
    /// Horizontal shift uniform in ±this fraction of the width.
    pub width_shift_range: f64,
    /// Vertical shift uniform in ±this fraction of the height.
    pub height_shift_range: f64,
    /// Shear angle uniform in ±this many degrees.
    pub shear_range: f64,
    /// Zoom factors (rows and columns drawn independently) uniform in [1 − z, 1 + z].
    pub zoom_range: f64,
    /// Mirror left–right with probability 0.5.
    pub horizontal_flip: bool,
    pub fill_mode: FillMode,
    /// torchvision's `RandomResizedCrop`, applied first (None: off).
    pub crop: Option<CropRange>,
    /// torchvision's `ColorJitter` and `RandomGrayscale`, after the geometric transforms.
    pub color: ColorJitter,
    /// torchvision's `GaussianBlur`, last (None: off).
    pub blur: Option<Blur>,
}

/// torchvision's `GaussianBlur(kernel_size, sigma)`: every image blurred by a `taps`-tap
/// Gaussian of a σ uniform in `sigma`, with reflect padding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blur {
    pub taps: usize,
    pub sigma: (f64, f64),
}

impl Blur {
    /// torchvision's default σ range.
    pub const SIGMA: (f64, f64) = (0.1, 2.0);
}

/// Photometric augmentation, as torchvision names it: `ColorJitter(brightness, contrast,
/// saturation, hue)` — factors uniform in [max(0, 1 − B), 1 + B] (likewise C, S), a hue
/// shift uniform in [−H, H], the four ops in a random order per image — and
/// `RandomGrayscale(p)`. `Default` is off (all 0). Applied on the GPU by `ops::photo` to the
/// gathered batch; saturation, hue and grey leave a grey image as it is.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    /// Probability of turning an image grey.
    pub grayscale: f64,
}

impl ColorJitter {
    pub fn is_off(&self) -> bool {
        *self == ColorJitter::default()
    }
}

/// The ranges of a random resized crop, as torchvision names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropRange {
    /// The crop's area as a fraction of the image's, uniform in [lo, hi].
    pub scale: (f64, f64),
    /// The crop's aspect ratio (width / height), log-uniform in [lo, hi].
    pub ratio: (f64, f64),
}

impl CropRange {
    /// torchvision's defaults: `scale=(0.08, 1.0)`, `ratio=(3/4, 4/3)`.
    pub const TORCHVISION: CropRange = CropRange {
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
    };
}

impl Augment {
    /// The `--augment` preset: mild geometric jitter that keeps an object recognisable and
    /// inside a 28×28 frame; no flip (it changes digits and text); black fill, since on the
    /// MNIST family `nearest` stretches whatever touches the frame (trouser legs, sleeves).
    pub const PRESET: Augment = Augment {
        rotation_range: 10.0,
        width_shift_range: 0.1,
        height_shift_range: 0.1,
        shear_range: 0.0,
        zoom_range: 0.1,
        horizontal_flip: false,
        fill_mode: FillMode::Constant,
        crop: None,
        color: ColorJitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            grayscale: 0.0,
        },
        blur: None,
    };

    /// True when no transform can differ from the identity.
    pub fn is_off(&self) -> bool {
        self.geometric_is_off() && self.photometric_is_off()
    }

    /// True when neither colour jitter nor blur is on: no photometric row is drawn.
    pub fn photometric_is_off(&self) -> bool {
        self.color.is_off() && self.blur.is_none()
    }

    /// True when no geometric transform can differ from the identity: the plain gather is
    /// used.
    pub fn geometric_is_off(&self) -> bool {
        self.rotation_range == 0.0
            && self.width_shift_range == 0.0
            && self.height_shift_range == 0.0
            && self.shear_range == 0.0
            && self.zoom_range == 0.0
            && !self.horizontal_flip
            && self.crop.is_none()
    }

    /// Refuses ranges that make no transform (or a degenerate one), naming the key.
    pub fn validate(&self) -> Result<()> {
        let check = |key: &str, v: f64, hi: f64, what: &str| {
            if v.is_finite() && (0.0..hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{key} must be in [0, {hi}) ({what}), got {v}"
                )))
            }
        };
        check("rotation_range", self.rotation_range, 180.0, "degrees")?;
        check(
            "width_shift_range",
            self.width_shift_range,
            1.0,
            "a fraction of the width",
        )?;
        check(
            "height_shift_range",
            self.height_shift_range,
            1.0,
            "a fraction of the height",
        )?;
        // At ±90° the shear matrix is singular: the image collapses onto a line.
        check("shear_range", self.shear_range, 90.0, "degrees")?;
        // Zoom 1 − z must stay above 0: a zero or negative scale is no image.
        check(
            "zoom_range",
            self.zoom_range,
            1.0,
            "zoom is drawn in [1 − zoom_range, 1 + zoom_range]",
        )?;
        if let Some(CropRange {
            scale: (s0, s1),
            ratio: (r0, r1),
        }) = self.crop
        {
            if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
                return Err(Error::Config(format!(
                    "crop_scale must be LO:HI with 0 < LO ≤ HI ≤ 1 (fractions of the image's \
                     area), got {s0}:{s1}"
                )));
            }
            if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
                return Err(Error::Config(format!(
                    "crop_ratio must be LO:HI with 0 < LO ≤ HI (width / height), got {r0}:{r1}"
                )));
            }
        }
        let c = &self.color;
        for (key, v) in [
            ("brightness", c.brightness),
            ("contrast", c.contrast),
            ("saturation", c.saturation),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!(
                    "{key} must be a finite number ≥ 0 (the factor is drawn in [max(0, 1 − \
                     {key}), 1 + {key}]), got {v}"
                )));
            }
        }
        if !(0.0..=0.5).contains(&c.hue) {
            return Err(Error::Config(format!(
                "hue must be in [0, 0.5] (the shift is drawn in [−hue, hue] of a turn), got {}",
                c.hue
            )));
        }
        if !(0.0..=1.0).contains(&c.grayscale) {
            return Err(Error::Config(format!(
                "random_grayscale must be a probability in [0, 1], got {}",
                c.grayscale
            )));
        }
        if let Some(Blur {
            taps,
            sigma: (s0, s1),
        }) = self.blur
        {
            if taps.is_multiple_of(2) {
                return Err(Error::Config(format!(
                    "gaussian_blur must be an odd kernel size (taps), got {taps}"
                )));
            }
            if !(s0 > 0.0 && s0 <= s1 && s1.is_finite()) {
                return Err(Error::Config(format!(
                    "blur_sigma must be LO:HI with 0 < LO ≤ HI, got {s0}:{s1}"
                )));
            }
        }
        Ok(())
    }
}

/// One image's transform parameters, as Keras's `get_random_transform` draws them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Degrees.
    pub theta: f64,
    /// Shift in rows (pixels; Keras's `tx`).
    pub tx: f64,
    /// Shift in columns (pixels; Keras's `ty`).
    pub ty: f64,
    /// Degrees.
    pub shear: f64,
    /// Zoom of rows and of columns (Keras's `zx`, `zy`).
    pub zx: f64,
    pub zy: f64,
    pub flip: bool,
    /// The crop window `[top, left, height, width]` in source pixels, resized to the whole
    /// image before the rest (None: the whole image).
    pub crop: Option<[f64; 4]>,
}

impl Transform {
    pub const IDENTITY: Transform = Transform {
        theta: 0.0,
        tx: 0.0,
        ty: 0.0,
        shear: 0.0,
        zx: 1.0,
        zy: 1.0,
        flip: false,
        crop: None,
    };

    /// The shader's row for an `height`×`width` image: output (x, y) → source (sx, sy).
    pub fn row(&self, height: usize, width: usize) -> [f32; TRANSFORM_LEN] {
        // Keras's composition in (row, column) coordinates, in f64: output → input.
        type M = [[f64; 3]; 3];
        let mul = |a: &M, b: &M| -> M {
            let mut c = [[0.0; 3]; 3];
            for i in 0..3 {
                for j in 0..3 {
                    c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
                }
            }
            c
        };
        let (st, ct) = self.theta.to_radians().sin_cos();
        let (ss, cs) = self.shear.to_radians().sin_cos();
        let rotation = [[ct, -st, 0.0], [st, ct, 0.0], [0.0, 0.0, 1.0]];
        let shift = [[1.0, 0.0, self.tx], [0.0, 1.0, self.ty], [0.0, 0.0, 1.0]];
        let shear = [[1.0, -ss, 0.0], [0.0, cs, 0.0], [0.0, 0.0, 1.0]];
        let zoom = [[self.zx, 0.0, 0.0], [0.0, self.zy, 0.0], [0.0, 0.0, 1.0]];
        let m = mul(&mul(&mul(&rotation, &shift), &shear), &zoom);
        // About the centre: T = offset · m · reset (Keras's transform_matrix_offset_center).
        let (or, oc) = ((height as f64 - 1.0) / 2.0, (width as f64 - 1.0) / 2.0);
        let offset = [[1.0, 0.0, or], [0.0, 1.0, oc], [0.0, 0.0, 1.0]];
        let reset = [[1.0, 0.0, -or], [0.0, 1.0, -oc], [0.0, 0.0, 1.0]];
        let t = mul(&mul(&offset, &m), &reset);
        // source row = t00·r + t01·c + t02, source column = t10·r + t11·c + t12, at output
        // (r, c) = (y, x); a flip reads the transformed image at c = W − 1 − x.
        let [[t00, t01, t02], [t10, t11, t12], _] = t;
        let w1 = width as f64 - 1.0;
        let (col, row) = if self.flip {
            ([-t11, t10, t12 + t11 * w1], [-t01, t00, t02 + t01 * w1])
        } else {
            ([t11, t10, t12], [t01, t00, t02])
        };
        // The crop maps the transformed image's (x', y') to the source: sx = a·x' + b,
        // sy = c·y' + d (torchvision's resize of the window to H×W, align_corners=False).
        let (col, row) = match self.crop {
            None => (col, row),
            Some([top, left, h, w]) => {
                let (a, c) = (w / width as f64, h / height as f64);
                let (b, d) = (left + 0.5 * a - 0.5, top + 0.5 * c - 0.5);
                (
                    [a * col[0], a * col[1], a * col[2] + b],
                    [c * row[0], c * row[1], c * row[2] + d],
                )
            }
        };
        let mut out = [0.0f32; TRANSFORM_LEN];
        for (o, v) in out.iter_mut().zip(col.iter().chain(&row)) {
            *o = *v as f32;
        }
        out
    }
}

/// torchvision's `RandomResizedCrop.get_params` for an `height`×`width` image: the window
/// `[top, left, h, w]` (whole pixels).
pub fn random_resized_crop(
    rng: &mut StdRng,
    range: CropRange,
    height: usize,
    width: usize,
) -> [f64; 4] {
    let (hf, wf) = (height as f64, width as f64);
    let area = hf * wf;
    let (l0, l1) = (range.ratio.0.ln(), range.ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(range.scale.0..=range.scale.1);
        let aspect = rng.random_range(l0..=l1).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && w <= wf && h > 0.0 && h <= hf {
            let top = rng.random_range(0..=(height - h as usize)) as f64;
            let left = rng.random_range(0..=(width - w as usize)) as f64;
            return [top, left, h, w];
        }
    }
    // The centre crop of the ratio nearest the image's own.
    let in_ratio = wf / hf;
    let (h, w) = if in_ratio < range.ratio.0 {
        ((wf / range.ratio.0).round(), wf)
    } else if in_ratio > range.ratio.1 {
        (hf, (hf * range.ratio.1).round())
    } else {
        (hf, wf)
    };
    [((hf - h) / 2.0).floor(), ((wf - w) / 2.0).floor(), h, w]
}

/// Draws one transform per image, seeded: the same seed gives the same transforms.
/// Not `Clone`, as the pair samplers: two copies would silently share a stream.
pub struct AugmentSampler {
    augment: Augment,
    height: usize,
    width: usize,
    rng: StdRng,
    /// The crop's own stream (see the module's notes).
    crop_rng: StdRng,
    /// The colour jitter's own stream.
    color_rng: StdRng,
    /// The blur's own stream.
    blur_rng: StdRng,
}

/// Mixed into the run seed so that the transforms are not drawn from the same stream as the
/// pair sampler (which is seeded with the run seed itself).
const SEED_SALT: u64 = 0x6175_676d_656e_7421; // "augment!"
const CROP_SALT: u64 = 0x7263_726f_7073_2121; // "rcrops!!"
const COLOR_SALT: u64 = 0x636f_6c6f_7572_2121; // "colour!!"
const BLUR_SALT: u64 = 0x626c_7572_7321_2121; // "blurs!!!"

impl AugmentSampler {
    pub fn new(augment: Augment, height: usize, width: usize, seed: u64) -> AugmentSampler {
        AugmentSampler {
            augment,
            height,
            width,
            rng: StdRng::seed_from_u64(seed ^ SEED_SALT),
            crop_rng: StdRng::seed_from_u64(seed ^ CROP_SALT),
            color_rng: StdRng::seed_from_u64(seed ^ COLOR_SALT),
            blur_rng: StdRng::seed_from_u64(seed ^ BLUR_SALT),
        }
    }

    /// The next image's photometric row for `ops::photo` (brightness, contrast, saturation,
    /// hue, order, grey, blur σ, 0), torchvision's draws: a random order of the four ops,
    /// each factor uniform in its range (exactly the identity where the range is 0), grey
    /// with its probability, σ uniform in the blur's range (0 without blur).
    pub fn next_color(&mut self) -> [f32; TRANSFORM_LEN] {
        let c = self.augment.color;
        let rng = &mut self.color_rng;
        let mut ops = [0u32, 1, 2, 3];
        for i in (1..4).rev() {
            ops.swap(i, rng.random_range(0..=i));
        }
        let mut factor = |range: f64| {
            if range == 0.0 {
                1.0
            } else {
                rng.random_range((1.0 - range).max(0.0)..=1.0 + range)
            }
        };
        let (b, ct, s) = (
            factor(c.brightness),
            factor(c.contrast),
            factor(c.saturation),
        );
        let hue = if c.hue == 0.0 {
            0.0
        } else {
            rng.random_range(-c.hue..=c.hue)
        };
        let grey = c.grayscale > 0.0 && rng.random::<f64>() < c.grayscale;
        let order: u32 = ops.iter().enumerate().map(|(k, &op)| op << (2 * k)).sum();
        let sigma = self.augment.blur.map_or(0.0, |blur| {
            self.blur_rng.random_range(blur.sigma.0..=blur.sigma.1)
        });
        [
            b as f32,
            ct as f32,
            s as f32,
            hue as f32,
            order as f32,
            f32::from(grey),
            sigma as f32,
            0.0,
        ]
    }

    /// The colour rows of `images` images into `out` (cleared first), `[images, 8]`.
    pub fn sample_colors_into(&mut self, images: usize, out: &mut Vec<f32>) {
        out.clear();
        for _ in 0..images {
            let row = self.next_color();
            out.extend_from_slice(&row);
        }
    }

    /// The next image's transform. Always seven draws from the affine stream, whatever the
    /// ranges, so that its position depends only on the number of images drawn (resuming
    /// replays both streams).
    pub fn next_transform(&mut self) -> Transform {
        let a = &self.augment;
        let mut sym = |range: f64| range * (2.0 * self.rng.random::<f64>() - 1.0);
        let theta = sym(a.rotation_range);
        let tx = sym(a.height_shift_range) * self.height as f64;
        let ty = sym(a.width_shift_range) * self.width as f64;
        let shear = sym(a.shear_range);
        let zx = 1.0 + sym(a.zoom_range);
        let zy = 1.0 + sym(a.zoom_range);
        let flip = self.rng.random::<f64>() < 0.5 && a.horizontal_flip;
        let crop = a
            .crop
            .map(|range| random_resized_crop(&mut self.crop_rng, range, self.height, self.width));
        Transform {
            theta,
            tx,
            ty,
            shear,
            zx,
            zy,
            flip,
            crop,
        }
    }

    /// The transform rows of `images` images into `out` (cleared first), `[images, 8]`.
    pub fn sample_into(&mut self, images: usize, out: &mut Vec<f32>) {
        out.clear();
        for _ in 0..images {
            let row = self.next_transform().row(self.height, self.width);
            out.extend_from_slice(&row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Augment = Augment {
        rotation_range: 20.0,
        width_shift_range: 0.2,
        height_shift_range: 0.1,
        shear_range: 15.0,
        zoom_range: 0.3,
        horizontal_flip: true,
        fill_mode: FillMode::Constant,
        crop: None,
        color: ColorJitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            grayscale: 0.0,
        },
        blur: None,
    };

    #[test]
    fn a_seed_repeats_its_transforms_and_another_seed_does_not() {
        let draw = |seed| {
            let mut s = AugmentSampler::new(ALL, 28, 20, seed);
            let mut rows = Vec::new();
            s.sample_into(50, &mut rows);
            rows
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn draws_stay_in_their_ranges_and_cover_them() {
        let mut s = AugmentSampler::new(ALL, 28, 20, 0);
        let draws: Vec<Transform> = (0..4000).map(|_| s.next_transform()).collect();
        let span = |f: &dyn Fn(&Transform) -> f64| {
            let v: Vec<f64> = draws.iter().map(f).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        // Each range is respected, and 4000 uniform draws come within 2% of both ends.
        let covers = |(lo, hi): (f64, f64), lim: f64, centre: f64| {
            assert!(
                lo >= centre - lim && hi <= centre + lim,
                "{lo}..{hi} vs ±{lim}"
            );
            assert!(
                lo < centre - 0.98 * lim && hi > centre + 0.98 * lim,
                "{lo}..{hi}"
            );
        };
        covers(span(&|t| t.theta), 20.0, 0.0);
        covers(span(&|t| t.tx), 0.1 * 28.0, 0.0);
        covers(span(&|t| t.ty), 0.2 * 20.0, 0.0);
        covers(span(&|t| t.shear), 15.0, 0.0);
        covers(span(&|t| t.zx), 0.3, 1.0);
        covers(span(&|t| t.zy), 0.3, 1.0);
        // zx and zy are independent draws, not one factor.
        assert!(draws.iter().filter(|t| t.zx != t.zy).count() == draws.len());
        let flips = draws.iter().filter(|t| t.flip).count();
        assert!((1800..2200).contains(&flips), "{flips} flips in 4000");
    }

    #[test]
    fn off_draws_the_identity() {
        assert!(Augment::default().is_off());
        assert!(!ALL.is_off());
        let mut s = AugmentSampler::new(Augment::default(), 28, 20, 0);
        let mut rows = Vec::new();
        s.sample_into(10, &mut rows);
        for row in rows.chunks(TRANSFORM_LEN) {
            assert_eq!(row, Transform::IDENTITY.row(28, 20));
            assert_eq!(row, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn rows_map_output_pixels_as_keras_does() {
        let at = |t: &Transform, h, w, x: f32, y: f32| {
            let r = t.row(h, w);
            (r[0] * x + r[1] * y + r[2], r[3] * x + r[4] * y + r[5])
        };
        let near = |a: (f32, f32), b: (f32, f32)| {
            assert!(
                (a.0 - b.0).abs() < 1e-5 && (a.1 - b.1).abs() < 1e-5,
                "{a:?} vs {b:?}"
            );
        };
        // A shift of tx rows reads row y + tx: the picture moves up by tx.
        let shift = Transform {
            tx: 2.0,
            ty: -1.0,
            ..Transform::IDENTITY
        };
        near(at(&shift, 5, 7, 3.0, 1.0), (2.0, 3.0));
        // The flip reads column W − 1 − x.
        let flip = Transform {
            flip: true,
            ..Transform::IDENTITY
        };
        near(at(&flip, 5, 7, 0.0, 4.0), (6.0, 4.0));
        // Zoom 2 about the centre (2, 3) of a 5×7 image reads twice as far from it.
        let zoom = Transform {
            zx: 2.0,
            zy: 2.0,
            ..Transform::IDENTITY
        };
        near(at(&zoom, 5, 7, 4.0, 3.0), (5.0, 4.0));
    }

    #[test]
    fn crops_follow_torchvision_get_params() {
        let mut rng = StdRng::seed_from_u64(5);
        let (h, w) = (28usize, 20usize);
        let range = CropRange::TORCHVISION;
        let mut areas = Vec::new();
        for _ in 0..4000 {
            let [top, left, ch, cw] = random_resized_crop(&mut rng, range, h, w);
            // Whole pixels inside the image.
            assert!(top >= 0.0 && left >= 0.0 && top + ch <= h as f64 && left + cw <= w as f64);
            assert!([top, left, ch, cw].iter().all(|v| v.fract() == 0.0));
            areas.push(ch * cw / (h * w) as f64);
        }
        // Areas spread over the scale range: some under 0.2, some over 0.8 of the image.
        assert!(areas.iter().any(|&a| a < 0.2) && areas.iter().any(|&a| a > 0.8));
        // A ratio no window of a 28×20 image can take (aspect 10): the centre fallback, the
        // ratio nearest the image's own (the widest, 10 wide: 20 wide and 2 high).
        let wide = CropRange {
            scale: (0.99, 1.0),
            ratio: (10.0, 12.0),
        };
        assert_eq!(
            random_resized_crop(&mut rng, wide, h, w),
            [13.0, 0.0, 2.0, 20.0]
        );
    }

    #[test]
    fn a_crop_row_maps_the_output_onto_its_window_as_torchvision_resizes() {
        // A 4×6 window at row 2, column 3 of a 28×20 image, resized to 28×20:
        // sx = 3 + (x + ½)·6/20 − ½, sy = 2 + (y + ½)·4/28 − ½.
        let t = Transform {
            crop: Some([2.0, 3.0, 4.0, 6.0]),
            ..Transform::IDENTITY
        };
        let r = t.row(28, 20);
        let (x, y) = (7.0f32, 11.0f32);
        let want = (
            3.0 + (x + 0.5) * 0.3 - 0.5,
            2.0 + (y + 0.5) * 4.0 / 28.0 - 0.5,
        );
        let got = (r[0] * x + r[1] * y + r[2], r[3] * x + r[4] * y + r[5]);
        assert!(
            (got.0 - want.0).abs() < 1e-5 && (got.1 - want.1).abs() < 1e-5,
            "{got:?} vs {want:?}"
        );
        // With a flip, the flipped image is cropped: column x reads the window at W − 1 − x.
        let flipped = Transform { flip: true, ..t };
        let r = flipped.row(28, 20);
        let got = r[0] * (19.0 - x) + r[1] * y + r[2];
        assert!((got - want.0).abs() < 1e-5, "{got} vs {}", want.0);
    }

    #[test]
    fn turning_the_crop_on_leaves_the_affine_draws_as_they_were() {
        let draws = |crop| {
            let mut s = AugmentSampler::new(Augment { crop, ..ALL }, 28, 20, 9);
            (0..50)
                .map(|_| {
                    let t = s.next_transform();
                    (t.theta, t.zx, t.flip)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(None), draws(Some(CropRange::TORCHVISION)));
    }

    #[test]
    fn colour_rows_draw_torchvisions_ranges_and_every_order() {
        let color = ColorJitter {
            brightness: 0.4,
            contrast: 0.0,
            saturation: 2.0,
            hue: 0.1,
            grayscale: 0.25,
        };
        let mut s = AugmentSampler::new(Augment { color, ..ALL }, 28, 20, 1);
        let rows: Vec<[f32; TRANSFORM_LEN]> = (0..4000).map(|_| s.next_color()).collect();
        assert!(rows.iter().all(|r| (0.6..=1.4).contains(&r[0])));
        assert!(
            rows.iter().all(|r| r[1] == 1.0),
            "contrast 0 is the identity"
        );
        // Saturation 2: [max(0, −1), 3].
        assert!(rows.iter().all(|r| (0.0..=3.0).contains(&r[2])));
        assert!(rows.iter().all(|r| (-0.1..=0.1).contains(&r[3])));
        let orders: std::collections::HashSet<u32> = rows.iter().map(|r| r[4] as u32).collect();
        assert_eq!(orders.len(), 24, "every permutation of the four ops");
        for &o in &orders {
            let mut ops: Vec<u32> = (0..4).map(|k| (o >> (2 * k)) & 3).collect();
            ops.sort();
            assert_eq!(ops, [0, 1, 2, 3]);
        }
        let greys = rows.iter().filter(|r| r[5] == 1.0).count();
        assert!(
            (850..1150).contains(&greys),
            "{greys} grey of 4000 at p = 0.25"
        );
        // Its own stream: the affine draws are unchanged by it.
        let mut plain = AugmentSampler::new(ALL, 28, 20, 1);
        let mut jittered = AugmentSampler::new(Augment { color, ..ALL }, 28, 20, 1);
        jittered.next_color();
        assert_eq!(plain.next_transform(), jittered.next_transform());
    }

    #[test]
    fn out_of_range_settings_are_refused_naming_the_key() {
        let refused = |a: Augment| a.validate().unwrap_err().to_string();
        assert!(ALL.validate().is_ok());
        assert!(
            refused(Augment {
                zoom_range: 1.0,
                ..ALL
            })
            .contains("zoom_range must be in [0, 1)")
        );
        assert!(
            refused(Augment {
                width_shift_range: 3.0,
                ..ALL
            })
            .contains("width_shift_range must be in [0, 1) (a fraction of the width)")
        );
        assert!(
            refused(Augment {
                rotation_range: -5.0,
                ..ALL
            })
            .contains("rotation_range must be in [0, 180)")
        );
        assert!(
            refused(Augment {
                shear_range: f64::NAN,
                ..ALL
            })
            .contains("shear_range")
        );
        assert!("mirror".parse::<FillMode>().is_err());
        assert_eq!("Constant".parse::<FillMode>().unwrap(), FillMode::Constant);
    }
}
