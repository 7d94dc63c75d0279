//! What the training examples share: open the GPU, train, print the result.

use siamese_gpu::Gpu;
use siamese_gpu::train::{self, TrainConfig};

/// The training budget in pairs: the first command-line argument, else `default`.
pub fn pairs_arg(default: usize) -> usize {
    std::env::args().nth(1).map_or(default, |a| {
        a.parse()
            .expect("the argument is the number of training pairs")
    })
}

/// Trains with `cfg`, printing each progress line, then the test result.
pub fn run(cfg: TrainConfig) {
    let outcome = Gpu::new()
        .and_then(|gpu| train::train(&gpu, &cfg, &mut |p| println!("{p}")))
        .and_then(train::Outcome::into_report);
    match outcome {
        Ok(r) => println!(
            "test pair accuracy {:.4} (threshold {:.4} from validation), ROC AUC {:.4}; {} pairs at {:.0} pairs/s",
            r.test.accuracy, r.test.threshold, r.test.roc_auc, r.train_pairs, r.pairs_per_sec
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
