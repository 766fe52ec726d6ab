//! The BERT forward pass on the CPU, in f32, for a batch of sequences of different lengths.
//!
//! Sequences are never padded: the dense layers run over all tokens of the batch at once
//! (one matrix product per weight matrix, Q/K/V stacked into one), attention runs per sequence
//! and head. So a text's embedding is the same alone or in any batch, and no work is spent on
//! padding. Every step uses all cores: matrix products split their output
//! ([`crate::math::gemm`]), attention runs one (sequence, head) pair per task, and the
//! element-wise steps split rows ([`crate::math::vector`]).

use super::config::BertConfig;
use super::weights::{BertWeights, Linear};
use crate::math::gemm::{self, Destination, View};
use crate::math::vector;
use rayon::prelude::*;

fn linear(layer: &Linear, x: &[f32], rows: usize, y: &mut Vec<f32>) {
    gemm::linear_into(x, rows, &layer.weight_t, &layer.bias, y)
}

/// A pointer to the attention output that tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);
// SAFETY: each attention task writes only its own (rows of one sequence) x (columns of one
// head) block.
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The element at `offset` (a method, so closures capture the whole `Send` wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Self-attention over every sequence and head. `qkv` holds rows `[Q | K | V]` (width `3h`),
/// sequences one after another; the result has the layout of Q (width `h`).
fn attention(
    qkv: &[f32],
    starts: &[(usize, usize)],
    hidden: usize,
    heads: usize,
    context: &mut Vec<f32>,
) {
    let total: usize = starts.iter().map(|(_, n)| n).sum();
    context.clear();
    context.resize(total * hidden, 0.0);
    let output = SharedOutput(context.as_mut_ptr());
    let dh = hidden / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let width = 3 * hidden;
    let tasks: Vec<(usize, usize, usize)> = starts
        .iter()
        .flat_map(|&(start, n)| (0..heads).map(move |head| (start, n, head)))
        .collect();
    tasks.par_iter().for_each(|&(start, n, head)| {
        let q = qkv[start * width + head * dh..].as_ptr();
        let k = qkv[start * width + hidden + head * dh..].as_ptr();
        let v = qkv[start * width + 2 * hidden + head * dh..].as_ptr();
        let mut scores = vec![0f32; n * n];
        // SAFETY: Q_h, K_h, V_h are n x dh views with row stride 3h inside `qkv` (rows
        // start..start+n, this head's columns); scores is n x n; the output block (rows
        // start..start+n, columns of this head) belongs to this task alone.
        unsafe {
            // scores = Q_h K_h^T / sqrt(dh)
            gemm::gemm_serial(
                n,
                dh,
                n,
                scale,
                View::rows(q, width),
                View::transposed(k, width),
                Destination::rows(scores.as_mut_ptr(), n),
                false,
            );
            vector::softmax_rows(&mut scores, n);
            // context_h = P V_h
            gemm::gemm_serial(
                n,
                n,
                dh,
                1.0,
                View::rows(scores.as_ptr(), n),
                View::rows(v, width),
                Destination::rows(output.at(start * hidden + head * dh), hidden),
                false,
            );
        }
    });
}

/// Token states of the last layer for `sequences` (token ids), rows in sequence order.
pub fn encode(config: &BertConfig, weights: &BertWeights, sequences: &[Vec<u32>]) -> Vec<f32> {
    let h = config.hidden_size;
    let total: usize = sequences.iter().map(Vec::len).sum();
    let mut x = vec![0f32; total * h];
    let mut row = 0;
    let mut starts = Vec::with_capacity(sequences.len());
    for sequence in sequences {
        starts.push((row, sequence.len()));
        for (position, id) in sequence.iter().enumerate() {
            let out = &mut x[row * h..(row + 1) * h];
            let word = &weights.word_embeddings[*id as usize * h..(*id as usize + 1) * h];
            let pos = &weights.position_embeddings[position * h..(position + 1) * h];
            let token_type = &weights.token_type_embeddings[..h];
            for i in 0..h {
                out[i] = word[i] + pos[i] + token_type[i];
            }
            row += 1;
        }
    }
    let eps = config.layer_norm_eps;
    let norm = &weights.embeddings_norm;
    vector::add_layer_norm(&mut x, &[], &norm.weight, &norm.bias, eps);

    // Scratch buffers, reused by every layer.
    let (mut qkv, mut context, mut projected, mut inner) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for layer in &weights.layers {
        linear(&layer.qkv, &x, total, &mut qkv);
        attention(&qkv, &starts, h, config.num_attention_heads, &mut context);
        linear(&layer.attention_output, &context, total, &mut projected);
        let norm = &layer.attention_norm;
        vector::add_layer_norm(&mut x, &projected, &norm.weight, &norm.bias, eps);

        linear(&layer.intermediate, &x, total, &mut inner);
        vector::gelu_in_place(&mut inner);
        linear(&layer.output, &inner, total, &mut projected);
        let norm = &layer.output_norm;
        vector::add_layer_norm(&mut x, &projected, &norm.weight, &norm.bias, eps);
    }
    x
}

/// Mean over each sequence's token states, optionally L2-normalized.
pub fn mean_pool(
    states: &[f32],
    lengths: &[usize],
    width: usize,
    normalize: bool,
) -> Vec<Vec<f32>> {
    let mut start = 0;
    lengths
        .iter()
        .map(|&n| {
            let mut sums = vec![0f64; width];
            for row in states[start * width..(start + n) * width].chunks(width) {
                for (s, v) in sums.iter_mut().zip(row) {
                    *s += *v as f64;
                }
            }
            start += n;
            let mut mean: Vec<f64> = sums.iter().map(|s| s / n.max(1) as f64).collect();
            if normalize {
                let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                mean.iter_mut().for_each(|v| *v /= norm);
            }
            mean.into_iter().map(|v| v as f32).collect()
        })
        .collect()
}
