//! Augmentation parameters: the Keras `ImageDataGenerator` set of random affine transforms
//! (rotation, shift, shear, zoom, horizontal flip), drawn on the host per image and step.
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
    };

    /// True when no transform can differ from the identity: the plain gather is used.
    pub fn is_off(&self) -> bool {
        self.rotation_range == 0.0
            && self.width_shift_range == 0.0
            && self.height_shift_range == 0.0
            && self.shear_range == 0.0
            && self.zoom_range == 0.0
            && !self.horizontal_flip
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
        )
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
        let mut out = [0.0f32; TRANSFORM_LEN];
        for (o, v) in out.iter_mut().zip(col.iter().chain(&row)) {
            *o = *v as f32;
        }
        out
    }
}

/// Draws one transform per image, seeded: the same seed gives the same transforms.
/// Not `Clone`, as the pair samplers: two copies would silently share a stream.
pub struct AugmentSampler {
    augment: Augment,
    height: usize,
    width: usize,
    rng: StdRng,
}

/// Mixed into the run seed so that the transforms are not drawn from the same stream as the
/// pair sampler (which is seeded with the run seed itself).
const SEED_SALT: u64 = 0x6175_676d_656e_7421; // "augment!"

impl AugmentSampler {
    pub fn new(augment: Augment, height: usize, width: usize, seed: u64) -> AugmentSampler {
        AugmentSampler {
            augment,
            height,
            width,
            rng: StdRng::seed_from_u64(seed ^ SEED_SALT),
        }
    }

    /// The next image's transform. Always seven draws, whatever the ranges, so that the
    /// stream position depends only on the number of images drawn (resuming replays it).
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
        Transform {
            theta,
            tx,
            ty,
            shear,
            zx,
            zy,
            flip,
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
