//! BERT weights from `model.safetensors`, checked name by name and shape by shape against
//! `config.json` before anything is used.

use super::config::BertConfig;
use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// A dense layer `y = x W^T + b` for a PyTorch weight `W[out, in]`, kept transposed: `W^T` is
/// `[in, out]` row-major, which the CPU's matrix products read as it is. (With PyTorch's layout
/// they first repacked `W` on every call, which was most of the time of a pass over a few
/// tokens.)
pub struct Linear {
    /// `W^T`: `inputs` rows of `outputs` values.
    pub weight_t: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

impl Linear {
    /// From a PyTorch weight `[outputs, inputs]` (left empty when it is not that size: the
    /// reader has recorded why).
    fn from_pytorch(weight: &[f32], bias: Vec<f32>, inputs: usize, outputs: usize) -> Linear {
        let weight_t = if weight.len() == outputs * inputs {
            transpose(weight, outputs, inputs)
        } else {
            Vec::new()
        };
        Linear {
            weight_t,
            bias,
            inputs,
            outputs,
        }
    }

    /// `W` in PyTorch's `[outputs, inputs]` layout (what the CUDA encoder uploads).
    pub fn weight(&self) -> Vec<f32> {
        transpose(&self.weight_t, self.inputs, self.outputs)
    }

    /// One layer computing the outputs of `layers` (same inputs) side by side: row `i` of the
    /// stacked `W^T` is row `i` of each layer's `W^T`, one after another.
    fn stack(layers: &[Linear]) -> Linear {
        let inputs = layers.first().map_or(0, |l| l.inputs);
        let outputs = layers.iter().map(|l| l.outputs).sum();
        let mut weight_t = Vec::with_capacity(inputs * outputs);
        if layers
            .iter()
            .all(|l| l.weight_t.len() == l.inputs * l.outputs)
        {
            for i in 0..inputs {
                for l in layers {
                    weight_t.extend_from_slice(&l.weight_t[i * l.outputs..(i + 1) * l.outputs]);
                }
            }
        }
        Linear {
            weight_t,
            bias: layers.iter().flat_map(|l| l.bias.iter().copied()).collect(),
            inputs,
            outputs,
        }
    }
}

/// The transpose of a row-major `rows x cols` matrix.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    debug_assert_eq!(values.len(), rows * cols);
    let mut out = vec![0f32; values.len()];
    for (r, row) in values.chunks_exact(cols.max(1)).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = *v;
        }
    }
    out
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
        let weight = self.get(&format!("{name}.weight"), &[outputs, inputs]);
        let bias = self.get(&format!("{name}.bias"), &[outputs]);
        Linear::from_pytorch(&weight, bias, inputs, outputs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::gemm;

    fn counting(len: usize, from: f32) -> Vec<f32> {
        (0..len).map(|i| from + i as f32 * 0.25).collect()
    }

    #[test]
    fn linear_keeps_w_transposed_and_gives_pytorchs_layout_back() {
        let (inputs, outputs) = (3, 2);
        // W[out, in] = [[0, 1, 2], [3, 4, 5]]
        let w: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let layer = Linear::from_pytorch(&w, vec![0.5, -0.5], inputs, outputs);
        assert_eq!(layer.weight_t, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(layer.weight(), w);
        // y = x W^T + b for x = [1, 1, 1]: [0+1+2, 3+4+5] + b
        assert_eq!(
            gemm::linear(&[1.0, 1.0, 1.0], 1, &layer.weight_t, &layer.bias),
            [3.5, 11.5]
        );
        // A weight of the wrong size stays empty (the reader reports the mismatch).
        assert!(
            Linear::from_pytorch(&w[..5], vec![0.0; 2], 3, 2)
                .weight_t
                .is_empty()
        );
    }

    #[test]
    fn stacked_layers_compute_each_layers_outputs_side_by_side() {
        let (rows, inputs) = (4, 5);
        let sizes = [3, 7, 2];
        let layers: Vec<Linear> = sizes
            .iter()
            .enumerate()
            .map(|(i, &outputs)| {
                Linear::from_pytorch(
                    &counting(outputs * inputs, i as f32),
                    counting(outputs, -(i as f32)),
                    inputs,
                    outputs,
                )
            })
            .collect();
        let x = counting(rows * inputs, 0.5);
        let stacked = Linear::stack(&layers);
        assert_eq!(stacked.outputs, 12);
        let all = gemm::linear(&x, rows, &stacked.weight_t, &stacked.bias);
        let mut column = 0;
        for layer in &layers {
            let alone = gemm::linear(&x, rows, &layer.weight_t, &layer.bias);
            for r in 0..rows {
                assert_eq!(
                    &all[r * 12 + column..r * 12 + column + layer.outputs],
                    &alone[r * layer.outputs..(r + 1) * layer.outputs]
                );
            }
            column += layer.outputs;
        }
        // The stacked weight in PyTorch's layout is the layers' weights one after another.
        let want: Vec<f32> = layers.iter().flat_map(|l| l.weight()).collect();
        assert_eq!(stacked.weight(), want);
    }
}
