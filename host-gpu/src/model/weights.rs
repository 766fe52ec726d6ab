//! BERT weights from `model.safetensors`, checked name by name and shape by shape against
//! `config.json` before anything is used.

use super::config::BertConfig;
use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// A dense layer `y = x W^T + b` (PyTorch layout: `W` is `[out, in]`).
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

impl Linear {
    /// One layer computing the outputs of `layers` (same inputs) side by side.
    fn stack(layers: &[Linear]) -> Linear {
        Linear {
            weight: layers
                .iter()
                .flat_map(|l| l.weight.iter().copied())
                .collect(),
            bias: layers.iter().flat_map(|l| l.bias.iter().copied()).collect(),
            inputs: layers.first().map_or(0, |l| l.inputs),
            outputs: layers.iter().map(|l| l.outputs).sum(),
        }
    }
}

/// LayerNorm parameters.
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One encoder layer.
pub struct Layer {
    /// Query, key and value projections stacked into one `[3 * hidden, hidden]` layer, so one
    /// matrix product computes all three (columns `0..h` are Q, `h..2h` K, `2h..3h` V).
    pub qkv: Linear,
    pub attention_output: Linear,
    pub attention_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: LayerNorm,
}

/// All weights of a BERT encoder, in f32.
pub struct BertWeights {
    pub word_embeddings: Vec<f32>,
    pub position_embeddings: Vec<f32>,
    pub token_type_embeddings: Vec<f32>,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<Layer>,
}

struct Reader<'a> {
    tensors: SafeTensors<'a>,
    prefix: String,
    problems: Vec<String>,
}

impl Reader<'_> {
    /// The f32 values of `name` if it exists with `shape`; records a problem otherwise.
    fn get(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        let full = format!("{}{name}", self.prefix);
        match self.tensors.tensor(&full) {
            Err(_) => {
                self.problems
                    .push(format!("missing tensor `{full}` (expected {shape:?})"));
                Vec::new()
            }
            Ok(view) if view.shape() != shape => {
                self.problems.push(format!(
                    "tensor `{full}` has shape {:?}, expected {shape:?}",
                    view.shape()
                ));
                Vec::new()
            }
            Ok(view) if view.dtype() != Dtype::F32 => {
                self.problems.push(format!(
                    "tensor `{full}` is {:?}, expected F32",
                    view.dtype()
                ));
                Vec::new()
            }
            Ok(view) => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }
    }

    fn linear(&mut self, name: &str, outputs: usize, inputs: usize) -> Linear {
        Linear {
            weight: self.get(&format!("{name}.weight"), &[outputs, inputs]),
            bias: self.get(&format!("{name}.bias"), &[outputs]),
            inputs,
            outputs,
        }
    }

    fn norm(&mut self, name: &str, width: usize) -> LayerNorm {
        LayerNorm {
            weight: self.get(&format!("{name}.weight"), &[width]),
            bias: self.get(&format!("{name}.bias"), &[width]),
        }
    }
}

impl BertWeights {
    /// Reads `dir/model.safetensors`; every missing or mismatched tensor is named in the error.
    pub fn read(dir: &Path, config: &BertConfig) -> Result<Self> {
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a valid safetensors file: {e:?}", path.display())
        })?;
        // Checkpoints saved from `BertModel` have bare names; from `BertFor...` a `bert.` prefix.
        let prefix = if tensors
            .tensor("bert.embeddings.word_embeddings.weight")
            .is_ok()
        {
            "bert.".to_string()
        } else {
            String::new()
        };
        let mut reader = Reader {
            tensors,
            prefix,
            problems: Vec::new(),
        };
        let h = config.hidden_size;
        let weights = BertWeights {
            word_embeddings: reader
                .get("embeddings.word_embeddings.weight", &[config.vocab_size, h]),
            position_embeddings: reader.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            ),
            token_type_embeddings: reader.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            ),
            embeddings_norm: reader.norm("embeddings.LayerNorm", h),
            layers: (0..config.num_hidden_layers)
                .map(|i| {
                    let p = format!("encoder.layer.{i}");
                    Layer {
                        qkv: Linear::stack(&[
                            reader.linear(&format!("{p}.attention.self.query"), h, h),
                            reader.linear(&format!("{p}.attention.self.key"), h, h),
                            reader.linear(&format!("{p}.attention.self.value"), h, h),
                        ]),
                        attention_output: reader.linear(
                            &format!("{p}.attention.output.dense"),
                            h,
                            h,
                        ),
                        attention_norm: reader.norm(&format!("{p}.attention.output.LayerNorm"), h),
                        intermediate: reader.linear(
                            &format!("{p}.intermediate.dense"),
                            config.intermediate_size,
                            h,
                        ),
                        output: reader.linear(
                            &format!("{p}.output.dense"),
                            h,
                            config.intermediate_size,
                        ),
                        output_norm: reader.norm(&format!("{p}.output.LayerNorm"), h),
                    }
                })
                .collect(),
        };
        if !reader.problems.is_empty() {
            bail!(
                "{} does not match config.json: {}",
                path.display(),
                reader.problems.join("; ")
            );
        }
        Ok(weights)
    }
}
