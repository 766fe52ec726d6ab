//! MiniLM on the CPU backend: embeddings per second at batch 1, 8 and 32 for texts of about
//! 128 tokens, median of several runs; then how long tokenizing such batches takes, which on a
//! GPU is a large part of a request. `cargo bench -p flint-gpu --bench minilm_cpu` (needs
//! `scripts/install-model.sh`; `FLINT_MINILM_DIR` overrides where the model is).

use flint_gpu::model::EmbeddingModel;
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let dir = std::env::var_os("FLINT_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-MiniLM-L6-v2")
        });
    let model = EmbeddingModel::load(&dir).expect("load the model (run scripts/install-model.sh)");
    let sentence = "Serverless functions start in microseconds while the expensive state stays resident on the GPU. ";
    let text = sentence.repeat(6);
    let tokens = model.tokenize(&[&text]).unwrap()[0].len().min(128);
    let ids: Vec<u32> = model.tokenize(&[&text]).unwrap()[0][..tokens].to_vec();
    println!(
        "MiniLM-L6 CPU backend, {tokens} tokens per text, {} threads available",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:>6} {:>12} {:>14}", "batch", "median ms", "embeddings/s");
    for batch in [1usize, 8, 32] {
        let sequences = vec![ids.clone(); batch];
        model.embed_ids(&sequences); // warm up
        let runs = if batch == 32 { 5 } else { 9 };
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(model.embed_ids(&sequences));
                started.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[runs / 2];
        println!(
            "{batch:>6} {:>12.1} {:>14.1}",
            median * 1e3,
            batch as f64 / median
        );
    }
    // Distinct texts, so that no batch repeats one: the rotation changes every text's words.
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let texts: Vec<String> = (0..32)
        .map(|i| {
            (0..100)
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let tokens = model.tokenize(&texts[..1]).unwrap()[0].len();
    println!("\ntokenizing texts of about {tokens} tokens");
    println!("{:>6} {:>12} {:>14}", "batch", "median ms", "texts/s");
    for batch in [1usize, 8, 32] {
        let mut times: Vec<f64> = (0..31)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(model.tokenize(&texts[..batch]).unwrap());
                started.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{batch:>6} {:>12.3} {:>14.0}",
            median * 1e3,
            batch as f64 / median
        );
    }
}
