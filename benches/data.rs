//! The start of a run on an image folder: decoding (on all cores, `RAYON_NUM_THREADS` to
//! limit them) against reading the decode cache the first run wrote.
//!
//! `cargo bench --bench data`; `SIAMESE_BENCH_IMAGES=5000` and `SIAMESE_BENCH_SIDE=96` set
//! the folder: that many RGB JPEGs (photographs' format) of side × side pixels with noise, in
//! 10 classes, resized to 64×64 as a run would. Each figure is a line for people and a JSON
//! object for tools.

use std::path::PathBuf;
use std::time::Instant;

use siamese_gpu::data::dataset::load_with;
use siamese_gpu::data::images::DataOptions;
use siamese_gpu::vocab::Color;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

fn main() {
    let (count, side) = (
        env_or("SIAMESE_BENCH_IMAGES", 5000),
        env_or("SIAMESE_BENCH_SIDE", 96),
    );
    let root = std::env::temp_dir().join(format!("siamese-bench-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    write_folder(&root, count, side as u32);
    let cache = root.join("cache");
    let options = DataOptions {
        color: Color::Rgb,
        image_size: Some([64, 64]),
        cache_dir: Some(cache.clone()),
        ..DataOptions::default()
    };
    let data = root.join("data");
    let timed = || {
        let start = Instant::now();
        let ds = load_with(Some(&data), None, &options).expect("the folder loads");
        assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
        (start.elapsed().as_secs_f64(), ds)
    };
    let (first, a) = timed();
    let (second, b) = timed();
    assert!(
        a.train == b.train && a.test == b.test,
        "the cache gives the decoded images"
    );
    let threads = rayon::current_num_threads();
    println!(
        "folder start  {count} images {side}×{side} JPEG → 64×64 RGB: decode {first:.2} s \
         ({threads} threads), cached {second:.3} s, cached / decode = {:.3}",
        second / first
    );
    println!(
        "{{\"kind\":\"folder_start\",\"images\":{count},\"side\":{side},\"threads\":{threads},\"decode_s\":{first:.3},\"cached_s\":{second:.4},\"ratio\":{:.4}}}",
        second / first
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// `count` JPEGs in `root/data/{train,test}/classN`, nine in ten for training.
fn write_folder(root: &std::path::Path, count: usize, side: u32) {
    let mut state = 1u64;
    for i in 0..count {
        let split = if i % 10 == 9 { "test" } else { "train" };
        let class = i % 10;
        let dir: PathBuf = root.join("data").join(split).join(format!("class{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::RgbImage::from_fn(side, side, |x, y| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = (state >> 59) as u8;
            let base = [
                (x * 255 / side) as u8,
                (y * 255 / side) as u8,
                (class * 25) as u8,
            ];
            image::Rgb(base.map(|b| b.saturating_add(noise)))
        });
        img.save(dir.join(format!("{i:05}.jpg"))).unwrap();
    }
}
