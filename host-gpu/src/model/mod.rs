//! Models resident in the pool. First family: BERT-style sentence encoders
//! (sentence-transformers layout: `model.safetensors`, `config.json`, `tokenizer.json`,
//! `sentence_bert_config.json`, `modules.json`, `1_Pooling/config.json`).
//!
//! [`EmbeddingModel::load`] validates a model directory completely (architecture, every
//! tensor's name and shape, tokenizer) before it is used; [`EmbeddingModel::embed`] tokenizes
//! with the model's own `tokenizer.json` and runs the encoder, mean pooling and normalization
//! as sentence-transformers does.

pub mod batcher;
mod config;
mod forward;
mod weights;

pub use config::{BertConfig, SentenceConfig};

use anyhow::{Context, Result, anyhow};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A sentence-embedding model loaded into memory.
pub struct EmbeddingModel {
    config: BertConfig,
    sentence: SentenceConfig,
    tokenizer: Tokenizer,
    weights: weights::BertWeights,
}

/// Embeddings of a batch of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens processed (special tokens included).
    pub tokens: usize,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("dimension", &self.dimension())
            .field("layers", &self.config.num_hidden_layers)
            .field("max_seq_length", &self.sentence.max_seq_length)
            .finish()
    }
}

impl EmbeddingModel {
    /// Loads and validates a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = BertConfig::read(dir)?;
        let sentence = SentenceConfig::read(dir, &config)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow!("loading {}: {e}", tokenizer_path.display()))?;
        // sentence-transformers ignores tokenizer.json's own truncation and padding: it truncates
        // at max_seq_length and pads only within a batch (here: not at all).
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: sentence.max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("configuring truncation: {e}"))?;
        tokenizer.with_padding(None);
        let vocab = tokenizer.get_vocab_size(true);
        anyhow::ensure!(
            vocab <= config.vocab_size,
            "tokenizer.json has {vocab} tokens but config.json's vocab_size is {}",
            config.vocab_size
        );
        let weights = weights::BertWeights::read(dir, &config)
            .with_context(|| format!("loading the weights of {}", dir.display()))?;
        Ok(EmbeddingModel {
            config,
            sentence,
            tokenizer,
            weights,
        })
    }

    /// Width of the embeddings.
    pub fn dimension(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest input in tokens.
    pub fn max_seq_length(&self) -> usize {
        self.sentence.max_seq_length
    }

    /// The architecture.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Token ids of each text, `[CLS] ... [SEP]`, truncated to `max_seq_length`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|text| {
                self.tokenizer
                    .encode(*text, true)
                    .map(|encoding| encoding.get_ids().to_vec())
                    .map_err(|e| anyhow!("tokenizing failed: {e}"))
            })
            .collect()
    }

    /// Sentence embeddings of already tokenized sequences (CPU).
    pub fn embed_ids(&self, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let states = forward::encode(&self.config, &self.weights, sequences);
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        forward::mean_pool(
            &states,
            &lengths,
            self.config.hidden_size,
            self.sentence.normalize,
        )
    }

    /// Tokenizes and embeds `texts` (CPU).
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        let sequences = self.tokenize(texts)?;
        let tokens = sequences.iter().map(Vec::len).sum();
        Ok(Embeddings {
            vectors: self.embed_ids(&sequences),
            tokens,
        })
    }
}
