//! The BERT forward pass on the CPU, in f32, for a batch of sequences of different lengths.
//!
//! Sequences are never padded: the dense layers run over all tokens of the batch at once
//! (one GEMM per weight matrix), attention runs per sequence. So a text's embedding is the same
//! alone or in any batch, and no work is spent on padding.

use super::config::BertConfig;
use super::weights::{BertWeights, LayerNorm, Linear};

/// `y[rows, out] = x[rows, in] W^T + b`.
fn linear(layer: &Linear, x: &[f32], rows: usize) -> Vec<f32> {
    let (n, k) = (layer.outputs, layer.inputs);
    let mut y = Vec::with_capacity(rows * n);
    for _ in 0..rows {
        y.extend_from_slice(&layer.bias);
    }
    if rows == 0 {
        return y;
    }
    // SAFETY: x is rows x k (row-major), W is n x k (so W^T has row stride 1, column stride
    // k), y is rows x n; beta = 1 adds the bias rows already in y.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            n,
            1.0,
            x.as_ptr(),
            k as isize,
            1,
            layer.weight.as_ptr(),
            1,
            k as isize,
            1.0,
            y.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    y
}

fn layer_norm(norm: &LayerNorm, x: &mut [f32], width: usize, eps: f64) {
    for row in x.chunks_mut(width) {
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / width as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = ((*v as f64 - mean) * inv) as f32 * norm.weight[i] + norm.bias[i];
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Self-attention of one sequence of `n` tokens starting at row `start`, all heads, into `ctx`.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ctx: &mut [f32],
    start: usize,
    n: usize,
    hidden: usize,
    heads: usize,
) {
    let dh = hidden / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut scores = vec![0f32; n * n];
    for head in 0..heads {
        let offset = start * hidden + head * dh;
        // scores[n, n] = Q_h K_h^T * scale, where Q_h and K_h are n x dh views with row stride
        // `hidden`.
        // SAFETY: the views stay inside q/k (rows start..start+n, columns of this head).
        unsafe {
            matrixmultiply::sgemm(
                n,
                dh,
                n,
                scale,
                q.as_ptr().add(offset),
                hidden as isize,
                1,
                k.as_ptr().add(offset),
                1,
                hidden as isize,
                0.0,
                scores.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        for row in scores.chunks_mut(n) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            for s in row.iter_mut() {
                *s /= sum;
            }
        }
        // ctx_h[n, dh] = P V_h.
        // SAFETY: as above; ctx has the same layout as q.
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                dh,
                1.0,
                scores.as_ptr(),
                n as isize,
                1,
                v.as_ptr().add(offset),
                hidden as isize,
                1,
                0.0,
                ctx.as_mut_ptr().add(offset),
                hidden as isize,
                1,
            );
        }
    }
}

/// Token states of the last layer for `sequences` (token ids), rows in sequence order.
pub fn encode(config: &BertConfig, weights: &BertWeights, sequences: &[Vec<u32>]) -> Vec<f32> {
    let h = config.hidden_size;
    let total: usize = sequences.iter().map(Vec::len).sum();
    let mut x = vec![0f32; total * h];
    let mut row = 0;
    for sequence in sequences {
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
    layer_norm(&weights.embeddings_norm, &mut x, h, eps);

    for layer in &weights.layers {
        let q = linear(&layer.query, &x, total);
        let k = linear(&layer.key, &x, total);
        let v = linear(&layer.value, &x, total);
        let mut ctx = vec![0f32; total * h];
        let mut start = 0;
        for sequence in sequences {
            attend(
                &q,
                &k,
                &v,
                &mut ctx,
                start,
                sequence.len(),
                h,
                config.num_attention_heads,
            );
            start += sequence.len();
        }
        let attention = linear(&layer.attention_output, &ctx, total);
        add_in_place(&mut x, &attention);
        layer_norm(&layer.attention_norm, &mut x, h, eps);

        let mut inner = linear(&layer.intermediate, &x, total);
        for value in inner.iter_mut() {
            *value = crate::cpu::gelu(*value);
        }
        let out = linear(&layer.output, &inner, total);
        add_in_place(&mut x, &out);
        layer_norm(&layer.output_norm, &mut x, h, eps);
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
