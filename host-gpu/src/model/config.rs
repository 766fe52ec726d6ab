//! What a model directory says about the model: `config.json` (the BERT architecture) and the
//! sentence-transformers files (`sentence_bert_config.json`, `modules.json`, `1_Pooling/`).

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use std::path::Path;

/// The BERT architecture from `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Positions the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Token types.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation; only the exact `gelu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// `bert` (or a BERT-compatible family).
    #[serde(default)]
    pub model_type: String,
}

fn two() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// How sentence-transformers turns token states into a sentence embedding.
#[derive(Debug, Clone)]
pub struct SentenceConfig {
    /// Longest input in tokens, `[CLS]` and `[SEP]` included (longer texts are truncated).
    pub max_seq_length: usize,
    /// Whether embeddings are L2-normalized (a `Normalize` module in `modules.json`).
    pub normalize: bool,
}

impl BertConfig {
    /// Reads and checks `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: BertConfig =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            config.model_type.is_empty()
                || ["bert", "roberta", "xlm-roberta"].contains(&config.model_type.as_str()),
            "{}: model_type `{}` is not a BERT-style encoder",
            path.display(),
            config.model_type
        );
        ensure!(
            config.hidden_act == "gelu",
            "{}: hidden_act `{}` is not supported (only the exact `gelu`)",
            path.display(),
            config.hidden_act
        );
        ensure!(
            config.num_attention_heads > 0
                && config
                    .hidden_size
                    .is_multiple_of(config.num_attention_heads),
            "{}: hidden_size {} is not divisible by num_attention_heads {}",
            path.display(),
            config.hidden_size,
            config.num_attention_heads
        );
        Ok(config)
    }
}

impl SentenceConfig {
    /// Reads the sentence-transformers configuration; only mean pooling is supported.
    pub fn read(dir: &Path, bert: &BertConfig) -> Result<Self> {
        #[derive(Deserialize)]
        struct SentenceBert {
            max_seq_length: usize,
        }
        #[derive(Deserialize)]
        struct Module {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            path: String,
        }
        #[derive(Deserialize)]
        struct Pooling {
            #[serde(default)]
            pooling_mode_mean_tokens: bool,
            #[serde(default)]
            pooling_mode_cls_token: bool,
            #[serde(default)]
            pooling_mode_max_tokens: bool,
        }
        let path = dir.join("sentence_bert_config.json");
        let max_seq_length = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<SentenceBert>(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?
                    .max_seq_length
            }
            Err(_) => bert.max_position_embeddings,
        };
        ensure!(
            (2..=bert.max_position_embeddings).contains(&max_seq_length),
            "max_seq_length {max_seq_length} is outside 2..={}",
            bert.max_position_embeddings
        );
        let mut normalize = false;
        let modules_path = dir.join("modules.json");
        if let Ok(bytes) = std::fs::read(&modules_path) {
            let modules: Vec<Module> = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", modules_path.display()))?;
            for module in modules {
                if module.kind.ends_with(".Normalize") {
                    normalize = true;
                } else if module.kind.ends_with(".Pooling") {
                    let pooling_path = dir.join(&module.path).join("config.json");
                    let bytes = std::fs::read(&pooling_path)
                        .with_context(|| format!("reading {}", pooling_path.display()))?;
                    let pooling: Pooling = serde_json::from_slice(&bytes)
                        .with_context(|| format!("parsing {}", pooling_path.display()))?;
                    if !pooling.pooling_mode_mean_tokens
                        || pooling.pooling_mode_cls_token
                        || pooling.pooling_mode_max_tokens
                    {
                        bail!("{}: only mean pooling is supported", pooling_path.display());
                    }
                } else if !module.kind.ends_with(".Transformer") {
                    bail!(
                        "{}: module `{}` is not supported",
                        modules_path.display(),
                        module.kind
                    );
                }
            }
        }
        Ok(SentenceConfig {
            max_seq_length,
            normalize,
        })
    }
}
