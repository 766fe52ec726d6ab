//! Element-wise and row-wise math of the forward pass, written so the compiler vectorizes it:
//! each public function runs a plain loop compiled for AVX-512, AVX2+FMA or the baseline,
//! picked at run time, and approximations of `exp` and `erf` that need no library calls.
//!
//! Accuracy: [`exp`] is within 2e-7 relative of `f32::exp` on the range that matters, [`erf`]
//! within 5e-7 absolute of the exact function in f32 (Abramowitz & Stegun 7.1.26); the MiniLM golden
//! tests hold at their 1e-4 bound with both.

use rayon::prelude::*;

/// Runs `$body` compiled three ways (AVX-512, AVX2+FMA, baseline) and picks the best the CPU
/// supports at run time. LLVM vectorizes the loops inside for each target.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Rows handed to one thread at a time by the parallel row-wise functions.
const ROWS_PER_TASK: usize = 16;
/// Independent partial sums (lanes) in reductions, so they vectorize.
const LANES: usize = 16;

/// `e^x` without a library call (range reduction to `[-ln2/2, ln2/2]`, degree-6 polynomial).
/// Inputs below -87 give about 1e-38 instead of 0; inputs above 88 saturate.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds x * log2(e) to the nearest integer n (ties to even) and leaves n
    // in the low bits of the sum's mantissa, so 2^n is built with integer operations. This is
    // what `round_ties_even` and `n as i32` compute, but a saturating `as` cast turns into
    // scalar code per lane, which made softmax twice as slow.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 127] (x is clamped), so n + 127 is a normal float's biased exponent.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// The error function, within 5e-7 absolute in f32 (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// GELU, erf form (as BERT and sentence-transformers use it).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(*v);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

vectorized! {
    fn gelu_slice(values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = gelu(*v);
        }
    }
}

/// GELU of every value, on all threads.
pub fn gelu_in_place(values: &mut [f32]) {
    values
        .par_chunks_mut(ROWS_PER_TASK * 1024)
        .for_each(gelu_slice);
}

vectorized! {
    /// Softmax of each row of `width` values (numerically stable: the row's maximum is
    /// subtracted first). Single-threaded: attention calls it per head, in parallel.
    pub fn softmax_rows(values: &mut [f32], width: usize) {
        if width == 0 {
            return;
        }
        for row in values.chunks_mut(width) {
            let top = max(row);
            for v in row.iter_mut() {
                *v = exp(*v - top);
            }
            let scale = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= scale;
            }
        }
    }
}

vectorized! {
    fn add_layer_norm_rows(
        x: &mut [f32],
        residual: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32,
    ) {
        let width = weight.len();
        for (row, add) in x.chunks_mut(width).zip(residual.chunks(width)) {
            for (v, a) in row.iter_mut().zip(add) {
                *v += a;
            }
            let mean = sum(row) / width as f32;
            let mut lanes = [0f32; LANES];
            let chunks = row.chunks_exact(LANES);
            let mut tail = 0f32;
            for v in chunks.remainder() {
                tail += (v - mean) * (v - mean);
            }
            for chunk in chunks {
                for (lane, v) in lanes.iter_mut().zip(chunk) {
                    *lane += (v - mean) * (v - mean);
                }
            }
            let variance = (lanes.iter().sum::<f32>() + tail) / width as f32;
            let inverse = 1.0 / (variance + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inverse * w + b;
            }
        }
    }
}

/// `x = LayerNorm(x + residual)` row by row (rows of `weight.len()` values), on all threads.
/// With an empty `residual`, just `LayerNorm(x)`.
pub fn add_layer_norm(x: &mut [f32], residual: &[f32], weight: &[f32], bias: &[f32], eps: f64) {
    let width = weight.len();
    if width == 0 {
        return;
    }
    let block = ROWS_PER_TASK * width;
    if residual.is_empty() {
        let zeros = vec![0f32; block];
        x.par_chunks_mut(block).for_each(|rows| {
            add_layer_norm_rows(rows, &zeros[..rows.len()], weight, bias, eps as f32)
        });
    } else {
        x.par_chunks_mut(block)
            .zip(residual.par_chunks(block))
            .for_each(|(rows, add)| add_layer_norm_rows(rows, add, weight, bias, eps as f32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_the_library_exp() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::INFINITY) > 1e38 && exp(f32::INFINITY).is_finite());
        assert!(exp(f32::NAN).is_nan());
        // Halfway cases of the range reduction (x * log2(e) = k + 0.5) round to even.
        for k in [-100i32, -3, -1, 0, 1, 2, 99] {
            let x = (k as f32 + 0.5) * std::f32::consts::LN_2;
            let want = (x as f64).exp();
            assert!(((exp(x) as f64 - want) / want).abs() < 4e-7, "exp({x})");
        }
    }

    #[test]
    fn erf_and_gelu_are_close_to_the_exact_functions() {
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let exact_erf = libm::erf(x as f64);
            assert!(
                (erf(x) as f64 - exact_erf).abs() < 5e-7,
                "erf({x}) = {} vs {exact_erf}",
                erf(x)
            );
            let exact_gelu = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / 2f64.sqrt()));
            assert!((gelu(x) as f64 - exact_gelu).abs() < 1e-6 * (1.0 + x.abs() as f64));
        }
        let mut values: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) / 3000.0)
            .collect();
        let expected: Vec<f32> = values.iter().map(|v| crate::cpu::gelu(*v)).collect();
        gelu_in_place(&mut values);
        for (got, want) in values.iter().zip(&expected) {
            assert!(
                (got - want).abs() < 1e-6 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_the_reference() {
        let width = 37;
        let mut values: Vec<f32> = (0..width * 5)
            .map(|i| ((i * 7919) % 101) as f32 / 7.0 - 6.0)
            .collect();
        let expected = crate::cpu::softmax(&values, width);
        softmax_rows(&mut values, width);
        for (got, want) in values.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        for row in values.chunks(width) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn add_layer_norm_matches_a_float64_reference() {
        let width = 50;
        let rows = 40;
        let mut x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 31) % 17) as f32 - 8.0)
            .collect();
        let residual: Vec<f32> = (0..rows * width).map(|i| (i % 13) as f32 * 0.25).collect();
        let weight: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 / 100.0).collect();
        let bias: Vec<f32> = (0..width).map(|i| i as f32 / 50.0 - 0.5).collect();
        let mut expected = Vec::new();
        for r in 0..rows {
            let row: Vec<f64> = (0..width)
                .map(|c| x[r * width + c] as f64 + residual[r * width + c] as f64)
                .collect();
            let mean = row.iter().sum::<f64>() / width as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            for (c, v) in row.iter().enumerate() {
                expected
                    .push((v - mean) / (var + 1e-12).sqrt() * weight[c] as f64 + bias[c] as f64);
            }
        }
        add_layer_norm(&mut x, &residual, &weight, &bias, 1e-12);
        for (got, want) in x.iter().zip(&expected) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}
