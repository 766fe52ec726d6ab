//! The BERT forward pass on a CUDA device: weights resident in device memory (charged to the
//! device's budget for as long as the model is loaded), cuBLAS for the matrix products and the
//! NVRTC-compiled kernels of `encoder.cu` for embeddings, bias + GELU, attention, residual +
//! LayerNorm and mean pooling.
//!
//! The layout is the CPU path's ([`super::forward`]): the tokens of all sequences are packed
//! without padding, so every dense layer is one product over all of them and a text's
//! embedding does not depend on its batch. One forward pass at a time runs on the encoder's own
//! stream; scratch buffers grow to the largest batch seen and are reused.

use super::config::BertConfig;
use super::weights::{BertWeights, LayerNorm, Linear};
use crate::cuda::{ContextBlas, CudaDevice, DeviceContext, compile_module};
use crate::error::{GpuError, GpuResult};
use crate::memory::Reservation;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// CUDA C of the encoder's kernels; the host defines `HEAD_DIM` when compiling it.
pub const SOURCE: &str = include_str!("encoder.cu");

/// Queries (and threads) per block of `flint_attention`; `ATTENTION_TILE` in `encoder.cu`.
const ATTENTION_TILE: u32 = 64;
/// Threads per block of the row kernels (LayerNorm, pooling).
const ROW_THREADS: u32 = 128;

/// The encoder's source with its head width defined, as compiled for a model.
pub fn source_for_head_dim(head_dim: usize) -> String {
    format!("#define HEAD_DIM {head_dim}\n{SOURCE}")
}

struct DeviceLinear {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    inputs: usize,
    outputs: usize,
}

struct DeviceNorm {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
}

struct DeviceLayer {
    qkv: DeviceLinear,
    attention_output: DeviceLinear,
    attention_norm: DeviceNorm,
    intermediate: DeviceLinear,
    output: DeviceLinear,
    output_norm: DeviceNorm,
}

struct Kernels {
    embed: CudaFunction,
    residual_norm: CudaFunction,
    bias_activation: CudaFunction,
    attention: CudaFunction,
    mean_pool: CudaFunction,
    _module: Arc<CudaModule>,
}

/// Activations of one forward pass, sized for `tokens` token rows and `sequences` sequences.
struct Scratch {
    tokens: usize,
    sequences: usize,
    states: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    context: CudaSlice<f32>,
    projected: CudaSlice<f32>,
    inner: CudaSlice<f32>,
    pooled: CudaSlice<f32>,
    _reservation: Reservation,
}

/// A BERT encoder resident on one CUDA device, in the context that was current when it was
/// loaded (if a fault poisons that context, the encoder is [stale](CudaEncoder::is_stale)).
pub struct CudaEncoder {
    device: Arc<CudaDevice>,
    context: Arc<DeviceContext>,
    stream: Arc<CudaStream>,
    blas: ContextBlas,
    kernels: Kernels,
    config: BertConfig,
    word_embeddings: CudaSlice<f32>,
    position_embeddings: CudaSlice<f32>,
    token_type_embeddings: CudaSlice<f32>,
    embeddings_norm: DeviceNorm,
    layers: Vec<DeviceLayer>,
    scratch: Option<Scratch>,
    _weights: Reservation,
}

fn weight_bytes(weights: &BertWeights) -> u64 {
    let linear = |l: &Linear| l.weight_t.len() + l.bias.len();
    let norm = |n: &LayerNorm| n.weight.len() + n.bias.len();
    let floats = weights.word_embeddings.len()
        + weights.position_embeddings.len()
        + weights.token_type_embeddings.len()
        + norm(&weights.embeddings_norm)
        + weights
            .layers
            .iter()
            .map(|l| {
                linear(&l.qkv)
                    + linear(&l.attention_output)
                    + norm(&l.attention_norm)
                    + linear(&l.intermediate)
                    + linear(&l.output)
                    + norm(&l.output_norm)
            })
            .sum::<usize>();
    floats as u64 * 4
}

impl CudaEncoder {
    /// Compiles the kernels for `device`, uploads `weights` and charges them to the device's
    /// memory budget.
    pub fn new(
        device: Arc<CudaDevice>,
        config: &BertConfig,
        weights: &BertWeights,
    ) -> GpuResult<CudaEncoder> {
        let head_dim = config.hidden_size / config.num_attention_heads;
        let context = device.usable_context()?;
        let reservation = Reservation::new(&[device.budget().clone()], weight_bytes(weights))?;
        let module = compile_module(&context.ctx, device.arch(), &source_for_head_dim(head_dim))?;
        let load = |name: &str| {
            module.load_function(name).map_err(|e| {
                GpuError::device(&format!("loading encoder kernel {name}"), format!("{e:?}"))
            })
        };
        let kernels = Kernels {
            embed: load("flint_embed")?,
            residual_norm: load("flint_residual_norm")?,
            bias_activation: load("flint_bias_activation")?,
            attention: load("flint_attention")?,
            mean_pool: load("flint_mean_pool")?,
            _module: module.clone(),
        };
        let stream = context
            .ctx
            .new_stream()
            .map_err(|e| device.fault(&context, "creating the model's stream", e))?;
        let blas = context.new_blas(stream.clone())?;
        let upload = |values: &[f32]| -> GpuResult<CudaSlice<f32>> {
            stream
                .clone_htod(values)
                .map_err(|e| device.fault(&context, "uploading model weights", e))
        };
        let linear = |l: &Linear| -> GpuResult<DeviceLinear> {
            Ok(DeviceLinear {
                weight: upload(&l.weight())?,
                bias: upload(&l.bias)?,
                inputs: l.inputs,
                outputs: l.outputs,
            })
        };
        let norm = |n: &LayerNorm| -> GpuResult<DeviceNorm> {
            Ok(DeviceNorm {
                weight: upload(&n.weight)?,
                bias: upload(&n.bias)?,
            })
        };
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    qkv: linear(&l.qkv)?,
                    attention_output: linear(&l.attention_output)?,
                    attention_norm: norm(&l.attention_norm)?,
                    intermediate: linear(&l.intermediate)?,
                    output: linear(&l.output)?,
                    output_norm: norm(&l.output_norm)?,
                })
            })
            .collect::<GpuResult<Vec<_>>>()?;
        let encoder = CudaEncoder {
            word_embeddings: upload(&weights.word_embeddings)?,
            position_embeddings: upload(&weights.position_embeddings)?,
            token_type_embeddings: upload(&weights.token_type_embeddings)?,
            embeddings_norm: norm(&weights.embeddings_norm)?,
            layers,
            kernels,
            blas,
            stream: stream.clone(),
            config: config.clone(),
            device: device.clone(),
            context: context.clone(),
            scratch: None,
            _weights: reservation,
        };
        stream
            .synchronize()
            .map_err(|e| encoder.fault("uploading model weights", e))?;
        Ok(encoder)
    }

    /// Whether a fault poisoned the context the encoder lives in: nothing more can run there,
    /// and the model has to be loaded again into the device's rebuilt context.
    pub fn is_stale(&self) -> bool {
        self.context.is_poisoned()
    }

    /// Which of its device's contexts the encoder lives in (see [`CudaDevice::current_generation`]).
    pub fn generation(&self) -> u64 {
        self.context.generation
    }

    /// The device the encoder runs on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Maps a driver error of the encoder's work (see [`CudaDevice`]'s fault handling).
    fn fault(&self, doing: &str, error: DriverError) -> GpuError {
        self.device.fault(&self.context, doing, error)
    }

    /// Sentence embeddings of token sequences: mean-pooled last-layer states, L2-normalized
    /// when `normalize` is set. One vector per sequence, in order.
    pub fn embed(&mut self, sequences: &[Vec<u32>], normalize: bool) -> GpuResult<Vec<Vec<f32>>> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.config.hidden_size;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut starts = Vec::with_capacity(sequences.len());
        let mut lengths = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            if sequence.is_empty() || sequence.len() > self.config.max_position_embeddings {
                return Err(GpuError::invalid(format!(
                    "a sequence has {} tokens; the model takes 1 to {}",
                    sequence.len(),
                    self.config.max_position_embeddings
                )));
            }
            if let Some(id) = sequence
                .iter()
                .find(|id| **id as usize >= self.config.vocab_size)
            {
                return Err(GpuError::invalid(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            starts.push(ids.len() as i32);
            lengths.push(sequence.len() as i32);
            ids.extend(sequence.iter().map(|id| *id as i32));
            positions.extend(0..sequence.len() as i32);
        }
        let tokens = ids.len();
        let longest = lengths.iter().copied().max().unwrap_or(1) as u32;
        self.ensure_scratch(tokens, sequences.len())?;
        let fault = |doing: &'static str| {
            let device = self.device.clone();
            let context = self.context.clone();
            move |e| device.fault(&context, doing, e)
        };
        let stream = self.stream.clone();
        let ids = stream
            .clone_htod(&ids)
            .map_err(fault("uploading token ids"))?;
        let positions = stream
            .clone_htod(&positions)
            .map_err(fault("uploading positions"))?;
        let starts = stream
            .clone_htod(&starts)
            .map_err(fault("uploading starts"))?;
        let lengths = stream
            .clone_htod(&lengths)
            .map_err(fault("uploading lengths"))?;

        let eps = self.config.layer_norm_eps as f32;
        let hidden = h as i32;
        let heads = self.config.num_attention_heads;
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        let row_config = |rows: usize, width: usize| LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: ((width + 32) * 4) as u32,
        };
        // Taken out while the pass runs (and dropped if it fails: the next pass reallocates).
        let mut taken = self.scratch.take().expect("sized above");
        let scratch = &mut taken;

        // SAFETY (every launch below): the arguments match the kernels' signatures in
        // `encoder.cu`, and every buffer holds the rows the launch geometry covers (scratch is
        // sized for `tokens` rows and `sequences.len()` sequences; ids are checked against the
        // vocabulary and positions against the model's maximum above).
        unsafe {
            let mut launch = stream.launch_builder(&self.kernels.embed);
            launch
                .arg(&ids)
                .arg(&positions)
                .arg(&self.word_embeddings)
                .arg(&self.position_embeddings)
                .arg(&self.token_type_embeddings)
                .arg(&self.embeddings_norm.weight)
                .arg(&self.embeddings_norm.bias)
                .arg(&mut scratch.states)
                .arg(&hidden)
                .arg(&eps);
            launch
                .launch(row_config(tokens, h))
                .map_err(fault("launching flint_embed"))?;
        }
        for layer in &self.layers {
            // qkv = states W_qkv^T + b
            self.dense(&layer.qkv, &scratch.states, tokens, &mut scratch.qkv, false)?;
            unsafe {
                let mut launch = stream.launch_builder(&self.kernels.attention);
                launch
                    .arg(&scratch.qkv)
                    .arg(&starts)
                    .arg(&lengths)
                    .arg(&mut scratch.context)
                    .arg(&hidden)
                    .arg(&scale);
                launch
                    .launch(LaunchConfig {
                        grid_dim: (
                            longest.div_ceil(ATTENTION_TILE),
                            heads as u32,
                            sequences.len() as u32,
                        ),
                        block_dim: (ATTENTION_TILE, 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .map_err(fault("launching flint_attention"))?;
            }
            linear(
                &self.blas,
                &layer.attention_output,
                &scratch.context,
                tokens,
                &mut scratch.projected,
            )?;
            self.residual_norm(
                scratch,
                &layer.attention_output.bias,
                &layer.attention_norm,
                tokens,
                row_config(tokens, h),
            )?;

            self.dense(
                &layer.intermediate,
                &scratch.states,
                tokens,
                &mut scratch.inner,
                true,
            )?;
            linear(
                &self.blas,
                &layer.output,
                &scratch.inner,
                tokens,
                &mut scratch.projected,
            )?;
            self.residual_norm(
                scratch,
                &layer.output.bias,
                &layer.output_norm,
                tokens,
                row_config(tokens, h),
            )?;
        }
        let normalize = normalize as i32;
        unsafe {
            let mut launch = stream.launch_builder(&self.kernels.mean_pool);
            launch
                .arg(&scratch.states)
                .arg(&starts)
                .arg(&lengths)
                .arg(&mut scratch.pooled)
                .arg(&hidden)
                .arg(&normalize);
            launch
                .launch(LaunchConfig {
                    grid_dim: (sequences.len() as u32, 1, 1),
                    block_dim: (ROW_THREADS, 1, 1),
                    shared_mem_bytes: 32 * 4,
                })
                .map_err(fault("launching flint_mean_pool"))?;
        }
        let mut pooled = vec![0f32; sequences.len() * h];
        stream
            .memcpy_dtoh(&scratch.pooled.slice(..sequences.len() * h), &mut pooled)
            .map_err(fault("copying embeddings back"))?;
        stream.synchronize().map_err(fault("running the encoder"))?;
        self.scratch = Some(taken);
        Ok(pooled.chunks(h).map(<[f32]>::to_vec).collect())
    }

    /// `y = x W^T + b` over `rows` rows, then exact GELU if `gelu` is set.
    fn dense(
        &self,
        layer: &DeviceLinear,
        x: &CudaSlice<f32>,
        rows: usize,
        y: &mut CudaSlice<f32>,
        gelu: bool,
    ) -> GpuResult<()> {
        linear(&self.blas, layer, x, rows, y)?;
        let (count, cols, gelu) = (rows as i64, layer.outputs as i32, gelu as i32);
        let n = rows * layer.outputs;
        // A grid-stride kernel, launched like the built-in element-wise ops.
        let config = crate::cuda::grid_stride_launch(n);
        let mut launch = self.stream.launch_builder(&self.kernels.bias_activation);
        launch
            .arg(y)
            .arg(&layer.bias)
            .arg(&count)
            .arg(&cols)
            .arg(&gelu);
        // SAFETY: matches `flint_bias_activation`; `y` holds `rows` rows of `layer.outputs`.
        unsafe { launch.launch(config) }
            .map(|_| ())
            .map_err(|e| self.fault("launching flint_bias_activation", e))
    }

    /// `states = LayerNorm(states + projected + bias)`, in place.
    fn residual_norm(
        &self,
        scratch: &mut Scratch,
        bias: &CudaSlice<f32>,
        norm: &DeviceNorm,
        tokens: usize,
        config: LaunchConfig,
    ) -> GpuResult<()> {
        let width = self.config.hidden_size as i32;
        let eps = self.config.layer_norm_eps as f32;
        let mut launch = self.stream.launch_builder(&self.kernels.residual_norm);
        launch
            .arg(&mut scratch.states)
            .arg(&scratch.projected)
            .arg(bias)
            .arg(&norm.weight)
            .arg(&norm.bias)
            .arg(&width)
            .arg(&eps);
        debug_assert!(scratch.tokens >= tokens);
        // SAFETY: matches `flint_residual_norm`; both buffers hold `tokens` rows of `width`.
        unsafe { launch.launch(config) }
            .map(|_| ())
            .map_err(|e| self.fault("launching flint_residual_norm", e))
    }

    /// Makes the scratch buffers hold at least `tokens` rows and `sequences` pooled vectors.
    fn ensure_scratch(&mut self, tokens: usize, sequences: usize) -> GpuResult<()> {
        if let Some(scratch) = &self.scratch
            && scratch.tokens >= tokens
            && scratch.sequences >= sequences
        {
            return Ok(());
        }
        let (old_tokens, old_sequences) = self
            .scratch
            .as_ref()
            .map_or((0, 0), |s| (s.tokens, s.sequences));
        // Grow geometrically so a slowly growing batch does not reallocate every time.
        let tokens = tokens.max(old_tokens * 2).max(512);
        let sequences = sequences.max(old_sequences * 2).max(32);
        self.scratch = None;
        let h = self.config.hidden_size;
        let floats = tokens * (h * 3 + h + h + h + self.config.intermediate_size) + sequences * h;
        let reservation = Reservation::new(&[self.device.budget().clone()], floats as u64 * 4)?;
        let alloc = |n: usize| {
            self.stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| self.fault("allocating the encoder's activations", e))
        };
        self.scratch = Some(Scratch {
            tokens,
            sequences,
            states: alloc(tokens * h)?,
            qkv: alloc(tokens * 3 * h)?,
            context: alloc(tokens * h)?,
            projected: alloc(tokens * h)?,
            inner: alloc(tokens * self.config.intermediate_size)?,
            pooled: alloc(sequences * h)?,
            _reservation: reservation,
        });
        Ok(())
    }
}

/// `y = x W^T` over `rows` rows with cuBLAS (the bias is added by the next kernel).
///
/// Row-major `x` `[rows, in]` is column-major `x^T`, and row-major `W` `[out, in]` is
/// column-major `W^T`; so the column-major product `y^T = W x^T` is `op(A) = A^T` on the
/// weights and `op(B) = B` on the inputs, and lands as row-major `y` `[rows, out]`.
fn linear(
    blas: &CudaBlas,
    layer: &DeviceLinear,
    x: &CudaSlice<f32>,
    rows: usize,
    y: &mut CudaSlice<f32>,
) -> GpuResult<()> {
    let config = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: layer.outputs as i32,
        n: rows as i32,
        k: layer.inputs as i32,
        alpha: 1.0f32,
        lda: layer.inputs as i32,
        ldb: layer.inputs as i32,
        beta: 0.0f32,
        ldc: layer.outputs as i32,
    };
    // SAFETY: `x` holds at least rows * inputs values, `y` rows * outputs (scratch sizing) and
    // the weight outputs * inputs (uploaded from a validated checkpoint).
    unsafe { blas.gemm(config, &layer.weight, x, y) }
        .map_err(|e| GpuError::device("cuBLAS sgemm in the encoder", format!("{e:?}")))
}
