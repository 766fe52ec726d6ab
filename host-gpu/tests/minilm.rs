//! all-MiniLM-L6-v2 against `../shared/golden/minilm-l6-v2.json`: tokenization exactly,
//! embeddings within the golden tolerance (max |diff| <= 1e-4, cosine >= 0.9999), alone and in
//! a batch that mixes short and long texts.
//!
//! The model is installed by `scripts/install-model.sh` (which `scripts/test.sh` runs); a
//! missing model is a failure, not a skip.

use flint_gpu::model::EmbeddingModel;
use serde_json::Value;
mod common;
#[path = "../../tests/fixtures.rs"]
mod fixtures;

use fixtures::{golden, minilm_dir as model_dir};
use std::sync::OnceLock;

fn model() -> &'static EmbeddingModel {
    static MODEL: OnceLock<EmbeddingModel> = OnceLock::new();
    MODEL.get_or_init(|| EmbeddingModel::load(&model_dir()).expect("loading all-MiniLM-L6-v2"))
}

/// The largest element-wise difference of two vectors.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn check(text: &str, got: &[f32], want: &Value) {
    let want: Vec<f32> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got.len(), want.len(), "{text:?}: dimension");
    let max = max_abs_diff(got, &want);
    let dot: f64 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum();
    let norms: f64 = (got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>()
        * want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>())
    .sqrt();
    let cosine = dot / norms;
    eprintln!(
        "{:>40.40} max |diff| {max:.2e} cosine {cosine:.9}",
        format!("{text:?}")
    );
    assert!(max <= 1e-4, "{text:?}: max |diff| {max:e} > 1e-4");
    assert!(cosine >= 0.9999, "{text:?}: cosine {cosine}");
}

/// The token ids sentence-transformers gave a golden case.
fn golden_ids(case: &Value) -> Vec<u32> {
    case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenization_matches_exactly() {
    let golden = golden();
    assert_eq!(golden["max_seq_length"], model().max_seq_length());
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = &model().tokenize(&[text]).unwrap()[0];
        assert_eq!(ids, &golden_ids(case), "token ids of {text:?}");
    }
}

#[test]
fn a_batch_is_tokenized_like_each_text_alone_and_in_order() {
    // A batch takes the parallel path; repeating the cases makes it long enough to be split
    // over every thread, with the 256-token case and the empty text among them.
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    let texts: Vec<&str> = (0..4)
        .flat_map(|_| cases.iter().map(|c| c["text"].as_str().unwrap()))
        .collect();
    let batch = model().tokenize(&texts).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (i, (text, ids)) in texts.iter().zip(&batch).enumerate() {
        let want = golden_ids(&cases[i % cases.len()]);
        assert_eq!(ids, &want, "token ids of text {i} of the batch, {text:?}");
    }
}

#[test]
fn each_text_alone_matches_the_golden_embedding() {
    check_each_text_alone(model());
}

fn check_each_text_alone(model: &EmbeddingModel) {
    let golden = golden();
    assert_eq!(model.dimension(), 384);
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let embeddings = model.embed(&[text]).unwrap();
        assert_eq!(
            embeddings.tokens,
            case["input_ids"].as_array().unwrap().len()
        );
        check(text, &embeddings.vectors[0], &case["embedding"]);
    }
}

#[test]
fn a_mixed_batch_matches_the_golden_embeddings() {
    check_a_mixed_batch(model());
}

fn check_a_mixed_batch(model: &EmbeddingModel) {
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    // Longest first, then the rest reversed: padding-sensitive implementations break here.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cases[i]["input_ids"].as_array().unwrap().len()));
    let texts: Vec<&str> = order
        .iter()
        .map(|&i| cases[i]["text"].as_str().unwrap())
        .collect();
    let embeddings = model.embed(&texts).unwrap();
    assert!(
        embeddings.tokens > 256,
        "the batch mixes long and short texts"
    );
    for (slot, &i) in order.iter().enumerate() {
        check(
            texts[slot],
            &embeddings.vectors[slot],
            &cases[i]["embedding"],
        );
    }
}

#[test]
fn the_cuda_encoder_matches_the_golden_embeddings_and_the_cpu_path() {
    let Some(pool) = common::cuda_pool() else {
        return;
    };
    let before = pool.used_bytes();
    let device = pool
        .device_for_model()
        .expect("a CUDA pool offers a device");
    let model = EmbeddingModel::load_on(&model_dir(), Some(device)).unwrap();
    assert_eq!(model.backend(), "cuda", "{:?}", model.cpu_reason());
    let charged = pool.used_bytes() - before;
    assert!(
        charged > 80 << 20,
        "the weights (~90 MB) are charged to the device: {charged} bytes"
    );
    check_each_text_alone(&model);
    check_a_mixed_batch(&model);

    // The same batch on the device and on the host agree closely (both f32).
    let golden = golden();
    let texts: Vec<&str> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let ids = model.tokenize(&texts).unwrap();
    let on_gpu = model.embed_ids(&ids);
    let on_cpu = model.embed_ids_on_cpu(&ids);
    for (text, (g, c)) in texts.iter().zip(on_gpu.iter().zip(&on_cpu)) {
        let max = max_abs_diff(g, c);
        assert!(max <= 1e-5, "{text:?}: GPU vs CPU max |diff| {max:e}");
    }
    assert_eq!(model.backend(), "cuda", "{:?}", model.cpu_reason());

    // With the device's memory exhausted, a batch needing more activations than the model holds
    // runs on the CPU, correctly, and the model stays on the device for later batches.
    let device = pool.device_for_model().unwrap().1;
    let hog = flint_gpu::Reservation::new(&[device.budget().clone()], device.budget().available())
        .unwrap();
    let many: Vec<Vec<u32>> = (0..40).flat_map(|_| ids.iter().cloned()).collect();
    let starved = model.embed_ids(&many);
    for (i, vector) in starved.iter().enumerate() {
        let want = &on_cpu[i % on_cpu.len()];
        let max = max_abs_diff(vector, want);
        assert!(
            max <= 1e-5,
            "sequence {i} without device memory: max |diff| {max:e}"
        );
    }
    assert_eq!(
        model.backend(),
        "cuda",
        "an out-of-memory batch does not evict the model"
    );
    drop(hog);
    assert_eq!(model.embed_ids(&many).len(), many.len());
    drop(model);
    assert_eq!(
        pool.used_bytes(),
        before,
        "unloading the model gives its device memory back"
    );
}

#[test]
fn broken_model_directories_name_what_is_wrong() {
    let source = model_dir();
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        std::os::unix::fs::symlink(source.join(file), dir.path().join(file)).unwrap();
    }
    std::os::unix::fs::symlink(source.join("1_Pooling"), dir.path().join("1_Pooling")).unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(source.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 7.into();
    config["intermediate_size"] = 1024.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let error = format!("{:#}", EmbeddingModel::load(dir.path()).unwrap_err());
    assert!(
        error.contains("missing tensor `encoder.layer.6.attention.self.query.weight`"),
        "{error}"
    );
    assert!(
        error.contains("`encoder.layer.0.intermediate.dense.weight` has shape [1536, 384], expected [1024, 384]"),
        "{error}"
    );

    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let error = format!("{:#}", EmbeddingModel::load(dir.path()).unwrap_err());
    assert!(error.contains("tokenizer.json"), "{error}");
}
