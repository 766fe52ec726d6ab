//! Models resident in the pool. First family: BERT-style sentence encoders
//! (sentence-transformers layout: `model.safetensors`, `config.json`, `tokenizer.json`,
//! `sentence_bert_config.json`, `modules.json`, `1_Pooling/config.json`).
//!
//! [`EmbeddingModel::load`] validates a model directory completely (architecture, every
//! tensor's name and shape, tokenizer) before it is used; [`EmbeddingModel::embed`] tokenizes
//! with the model's own `tokenizer.json` and runs the encoder, mean pooling and normalization
//! as sentence-transformers does, on the CUDA device the model was loaded onto
//! ([`cuda_encoder`]) or on the host's cores ([`forward`]).
//!
//! A model on a device keeps its f32 weights in host memory too: if a forward pass fails on the
//! device (its memory is exhausted, say), that batch runs on the CPU instead. If the device
//! faulted (a poisoned context), the model runs on the CPU until the device has a rebuilt
//! context, and the first batch after that loads it onto the device again: requests are
//! served more slowly rather than lost. (CUDA may never allow that rebuild in the process
//! that faulted; the model then runs on the CPU until the node restarts.)

pub mod batcher;
mod config;
pub mod cuda_encoder;
mod forward;
mod weights;

pub use config::{BertConfig, SentenceConfig};

use crate::cuda::CudaDevice;
use anyhow::{Context, Result, anyhow};
use cuda_encoder::CudaEncoder;
use rayon::prelude::*;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The threads that tokenize batches: one per core, apart from rayon's global pool, where the
/// CPU forward pass splits its work. A request with megabytes of text then shares the cores
/// with other requests' forward passes through the OS scheduler instead of holding every
/// worker of theirs until its texts are done. Started on first use; `None` (batches are then
/// tokenized on the caller's thread) if the threads cannot be started.
fn tokenizer_threads() -> Option<&'static rayon::ThreadPool> {
    static THREADS: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    THREADS
        .get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("flint-tokenize-{i}"))
                .build()
                .inspect_err(|error| {
                    tracing::warn!("tokenizing on one thread: starting its threads failed: {error}")
                })
                .ok()
        })
        .as_ref()
}

/// A sentence-embedding model loaded into memory.
pub struct EmbeddingModel {
    config: BertConfig,
    sentence: SentenceConfig,
    tokenizer: Tokenizer,
    weights: weights::BertWeights,
    /// Where the forward pass runs.
    residence: Mutex<Residence>,
    /// Why the model runs on the CPU although a device was offered, if it does.
    cpu_reason: Mutex<Option<String>>,
}

/// Where a model's forward pass runs.
enum Residence {
    /// On the host's cores only: no device was offered, or loading onto it failed.
    Cpu,
    /// On the device with this pool index.
    Device {
        index: usize,
        encoder: Box<CudaEncoder>,
    },
    /// On the host's cores because a fault poisoned the device's context `generation`; once
    /// the device has a newer context, the model is loaded onto it again.
    Evicted {
        index: usize,
        device: Arc<CudaDevice>,
        generation: u64,
    },
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
    /// Loads and validates a model directory; it runs on the host's CPU cores.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, None)
    }

    /// Loads and validates a model directory and, given a device (its pool index and the
    /// device), uploads the weights there and compiles the encoder's kernels for it. If that
    /// fails, the model still loads and runs on the CPU; [`EmbeddingModel::cpu_reason`] says why.
    pub fn load_on(dir: &Path, device: Option<(usize, Arc<CudaDevice>)>) -> Result<Self> {
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
        let mut cpu_reason = None;
        let residence = match device {
            None => Residence::Cpu,
            Some((index, device)) => match CudaEncoder::new(device.clone(), &config, &weights) {
                Ok(encoder) => Residence::Device {
                    index,
                    encoder: Box::new(encoder),
                },
                Err(error) => {
                    tracing::error!(
                        gpu = device.ordinal(),
                        "the model cannot run on the GPU, using the CPU: {error}"
                    );
                    cpu_reason = Some(format!("loading it onto GPU {index} failed: {error}"));
                    Residence::Cpu
                }
            },
        };
        Ok(EmbeddingModel {
            config,
            sentence,
            tokenizer,
            weights,
            residence: Mutex::new(residence),
            cpu_reason: Mutex::new(cpu_reason),
        })
    }

    fn residence(&self) -> std::sync::MutexGuard<'_, Residence> {
        self.residence.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_cpu_reason(&self, reason: Option<String>) {
        *self.cpu_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// Loads an evicted model onto its device again once the device has a rebuilt context.
    fn reload_if_rebuilt(&self, residence: &mut Residence) {
        let Residence::Evicted {
            index,
            device,
            generation,
        } = residence
        else {
            return;
        };
        let current = device.current_generation();
        if device.is_faulted() || current <= *generation {
            return;
        }
        match CudaEncoder::new(device.clone(), &self.config, &self.weights) {
            Ok(encoder) => {
                tracing::warn!(
                    gpu = *index,
                    "the model is back on GPU {index} after its context was rebuilt"
                );
                self.set_cpu_reason(None);
                *residence = Residence::Device {
                    index: *index,
                    encoder: Box::new(encoder),
                };
            }
            Err(error) => {
                // Wait for the next rebuild rather than retrying every batch.
                tracing::error!(
                    gpu = *index,
                    "loading the model onto GPU {index}'s rebuilt context failed; it stays on the CPU: {error}"
                );
                self.set_cpu_reason(Some(format!(
                    "GPU {index} faulted, and loading it onto the rebuilt context failed: {error}"
                )));
                *generation = current;
            }
        }
    }

    /// Where the forward pass runs: `cuda` or `cpu`.
    pub fn backend(&self) -> &'static str {
        if self.device_index().is_some() {
            "cuda"
        } else {
            "cpu"
        }
    }

    /// The pool index of the device the model runs on, if it runs on one.
    pub fn device_index(&self) -> Option<usize> {
        match &*self.residence() {
            Residence::Device { index, .. } => Some(*index),
            Residence::Cpu | Residence::Evicted { .. } => None,
        }
    }

    /// Why the model runs on the CPU although it was loaded onto a device (loading failed, or
    /// the device failed later); `None` if it runs on its device or was never offered one.
    pub fn cpu_reason(&self) -> Option<String> {
        self.cpu_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Token ids of each text, `[CLS] ... [SEP]`, truncated to `max_seq_length`, in order.
    ///
    /// The texts of a batch are tokenized in parallel (on `tokenizer_threads`), and without
    /// the character offsets that only highlighting would need: for 32 texts of about 140
    /// tokens that is 2.7 ms instead of 5.5 ms on two cores, and less again on a GPU machine's
    /// many cores, where tokenizing one text after another would cost more than the forward
    /// pass. A lone text is tokenized on the caller's thread.
    pub fn tokenize<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        let one = |text: &S| {
            self.tokenizer
                .encode_fast(text.as_ref(), true)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|e| anyhow!("tokenizing failed: {e}"))
        };
        match tokenizer_threads() {
            Some(threads) if texts.len() > 1 => {
                threads.install(|| texts.par_iter().map(one).collect())
            }
            _ => texts.iter().map(one).collect(),
        }
    }

    /// Sentence embeddings of already tokenized sequences (ids inside the vocabulary, at most
    /// `max_position_embeddings` long), on the model's device or the CPU.
    pub fn embed_ids(&self, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        {
            let mut residence = self.residence();
            self.reload_if_rebuilt(&mut residence);
            if let Residence::Device { index, encoder } = &mut *residence {
                match encoder.embed(sequences, self.sentence.normalize) {
                    Ok(vectors) => return vectors,
                    Err(error) if encoder.is_stale() => {
                        tracing::error!(
                            gpu = *index,
                            "the device faulted during the model's forward pass; the model runs on the CPU until the device is back in service (a rebuilt context, or a restart): {error}"
                        );
                        self.set_cpu_reason(Some(format!("GPU {index} faulted: {error}")));
                        *residence = Residence::Evicted {
                            index: *index,
                            device: encoder.device().clone(),
                            generation: encoder.generation(),
                        };
                    }
                    Err(error) => {
                        // Out of device memory, for instance: this batch runs on the CPU, the
                        // next ones try the device again.
                        tracing::warn!(
                            gpu = *index,
                            "the model's forward pass failed on the GPU, running this batch on the CPU: {error}"
                        );
                    }
                }
            }
        }
        self.embed_ids_on_cpu(sequences)
    }

    /// Sentence embeddings of already tokenized sequences on the host's CPU cores, whatever
    /// device the model was loaded onto.
    pub fn embed_ids_on_cpu(&self, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let states = forward::encode(&self.config, &self.weights, sequences);
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        forward::mean_pool(
            &states,
            &lengths,
            self.config.hidden_size,
            self.sentence.normalize,
        )
    }

    /// Tokenizes and embeds `texts`.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        let sequences = self.tokenize(texts)?;
        let tokens = sequences.iter().map(Vec::len).sum();
        Ok(Embeddings {
            vectors: self.embed_ids(&sequences),
            tokens,
        })
    }
}
