//! The host side of `flint:gpu/models`: open, describe, infer, and text-level embed through
//! the model's batcher.

use super::bindings::flint::gpu::models::{self, Embeddings, ModelInfo, TensorSpec};
use super::bindings::flint::gpu::types::{Dtype, Error};
use super::{GpuView, HostModel, HostTensor};
use flint_gpu::DType;
use std::sync::Arc;
use wasmtime::component::Resource;

/// Most texts one `embed` call may pass.
pub const MAX_TEXTS: usize = 1024;
/// Most bytes of text one `embed` call may pass.
pub const MAX_TEXT_BYTES: usize = 8 << 20;

/// Texts of at most this many bytes in all are tokenized on the invocation's own thread: about
/// 0.2 ms of work at most (a sentence takes 10-20 us), less than handing it to the blocking
/// pool and back. More goes to the blocking pool, so that it does not hold up the worker's
/// other tasks.
pub const INLINE_TOKENIZE_MAX_BYTES: usize = 1 << 10;

type Answer<T> = wasmtime::Result<Result<T, Error>>;

impl GpuView<'_> {
    /// Runs token sequences through the model's batcher and waits for the vectors, counting the
    /// wait as the invocation's GPU time.
    async fn run_batched(
        &mut self,
        model: &crate::models::ResidentModel,
        sequences: Vec<Vec<u32>>,
    ) -> wasmtime::Result<Vec<Vec<f32>>> {
        let started = std::time::Instant::now();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        model.batcher.submit(
            sequences,
            Box::new(move |vectors| {
                let _ = sender.send(vectors);
            }),
        );
        let vectors = receiver
            .await
            .map_err(|_| wasmtime::format_err!("the model worker stopped"))?;
        let device = self.ctx.model_device(&model.model);
        self.ctx.record_busy(started.elapsed(), device);
        Ok(vectors)
    }
}

impl models::Host for GpuView<'_> {}

impl models::HostModel for GpuView<'_> {
    async fn open(&mut self, name: String) -> Answer<Resource<HostModel>> {
        let Some(model) = self.ctx.models.get(&name) else {
            return Ok(Err(Error::NotFound(format!(
                "no model named `{name}` (the operator registers models with `fnctl model add`)"
            ))));
        };
        let in_use = model.in_use.clone().read_owned().await;
        Ok(Ok(self.table.push(HostModel {
            model,
            _in_use: in_use,
        })?))
    }

    async fn describe(&mut self, this: Resource<HostModel>) -> wasmtime::Result<ModelInfo> {
        let model = &self.table.get(&this)?.model;
        let dimension = model.model.dimension() as i64;
        let ids = |name: &str| TensorSpec {
            name: name.to_string(),
            dtype: Dtype::I64,
            shape: vec![-1, -1],
        };
        Ok(ModelInfo {
            name: model.registration.name.clone(),
            kind: "sentence-embedding".to_string(),
            inputs: vec![ids("input_ids"), ids("attention_mask")],
            outputs: vec![TensorSpec {
                name: "sentence_embedding".to_string(),
                dtype: Dtype::F32,
                shape: vec![-1, dimension],
            }],
            dimension: dimension as u32,
            max_tokens: model.model.max_seq_length() as u32,
        })
    }

    async fn infer(
        &mut self,
        this: Resource<HostModel>,
        inputs: Vec<(String, Resource<HostTensor>)>,
    ) -> Answer<Vec<(String, Resource<HostTensor>)>> {
        let model = self.table.get(&this)?.model.clone();
        let session = match self.ctx.session() {
            Ok(session) => session,
            Err(error) => return Ok(Err(error.into())),
        };
        let mut ids = None;
        let mut mask = None;
        for (name, handle) in &inputs {
            let tensor = self.tensor(handle)?;
            match name.as_str() {
                "input_ids" => ids = Some(tensor),
                "attention_mask" => mask = Some(tensor),
                other => {
                    return Ok(Err(Error::InvalidArgument(format!(
                        "unknown input `{other}` (inputs: input_ids, attention_mask)"
                    ))));
                }
            }
        }
        let Some(ids) = ids else {
            return Ok(Err(Error::InvalidArgument(
                "missing input `input_ids`".into(),
            )));
        };
        let sequences = match sequences_from(&session, &ids, mask.as_deref(), &model) {
            Ok(sequences) => sequences,
            Err(error) => return Ok(Err(error)),
        };
        let batch = sequences.len();
        let vectors = self.run_batched(&model, sequences).await?;
        let values: Vec<f32> = vectors.into_iter().flatten().collect();
        let dims = [batch as u32, model.model.dimension() as u32];
        match session.upload_f32(&dims, &values) {
            Ok(tensor) => {
                let handle = self.table.push(HostTensor(Arc::new(tensor)))?;
                Ok(Ok(vec![("sentence_embedding".to_string(), handle)]))
            }
            Err(error) => Ok(Err(error.into())),
        }
    }

    async fn embed(&mut self, this: Resource<HostModel>, texts: Vec<String>) -> Answer<Embeddings> {
        let model = self.table.get(&this)?.model.clone();
        if texts.len() > MAX_TEXTS {
            return Ok(Err(Error::InvalidArgument(format!(
                "{} texts in one call; the limit is {MAX_TEXTS}",
                texts.len()
            ))));
        }
        let bytes: usize = texts.iter().map(String::len).sum();
        if bytes > MAX_TEXT_BYTES {
            return Ok(Err(Error::InvalidArgument(format!(
                "{bytes} bytes of text in one call; the limit is {MAX_TEXT_BYTES}"
            ))));
        }
        let tokenized = if bytes <= INLINE_TOKENIZE_MAX_BYTES {
            model.model.tokenize(&texts)
        } else {
            let tokenizer_model = model.model.clone();
            tokio::task::spawn_blocking(move || tokenizer_model.tokenize(&texts))
                .await
                .map_err(|e| wasmtime::format_err!("tokenizer task failed: {e}"))?
        };
        let sequences = match tokenized {
            Ok(sequences) => sequences,
            Err(error) => return Ok(Err(Error::InvalidArgument(format!("{error:#}")))),
        };
        let tokens = sequences.iter().map(Vec::len).sum::<usize>() as u32;
        let vectors = self.run_batched(&model, sequences).await?;
        Ok(Ok(Embeddings { vectors, tokens }))
    }

    async fn drop(&mut self, this: Resource<HostModel>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// Token sequences from `input_ids` (and `attention_mask`), checked against the model.
fn sequences_from(
    session: &flint_gpu::Session,
    ids: &flint_gpu::Tensor,
    mask: Option<&flint_gpu::Tensor>,
    model: &crate::models::ResidentModel,
) -> Result<Vec<Vec<u32>>, Error> {
    let read = |tensor: &flint_gpu::Tensor, name: &str| -> Result<Vec<i64>, Error> {
        let bytes = session.download(tensor).map_err(Error::from)?;
        match tensor.dtype() {
            DType::I64 => Ok(bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()),
            DType::I32 => Ok(bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect()),
            other => Err(Error::InvalidArgument(format!(
                "`{name}` must be i64 or i32; got {other}"
            ))),
        }
    };
    let &[batch, length] = ids.shape() else {
        return Err(Error::InvalidArgument(format!(
            "`input_ids` must be [batch, seq]; got {:?}",
            ids.shape()
        )));
    };
    if length > model.model.max_seq_length() {
        return Err(Error::InvalidArgument(format!(
            "sequences of {length} tokens exceed the model's {}",
            model.model.max_seq_length()
        )));
    }
    let values = read(ids, "input_ids")?;
    let mask = match mask {
        Some(mask) if mask.shape() != ids.shape() => {
            return Err(Error::InvalidArgument(format!(
                "`attention_mask` {:?} must have the shape of `input_ids` {:?}",
                mask.shape(),
                ids.shape()
            )));
        }
        Some(mask) => Some(read(mask, "attention_mask")?),
        None => None,
    };
    let vocab = model.model.config().vocab_size as i64;
    let mut sequences = Vec::with_capacity(batch);
    for row in 0..batch {
        let mut sequence = Vec::with_capacity(length);
        for column in 0..length {
            let index = row * length + column;
            if mask.as_ref().is_some_and(|m| m[index] == 0) {
                continue;
            }
            let id = values[index];
            if !(0..vocab).contains(&id) {
                return Err(Error::InvalidArgument(format!(
                    "token id {id} is outside the vocabulary (0..{vocab})"
                )));
            }
            sequence.push(id as u32);
        }
        sequences.push(sequence);
    }
    Ok(sequences)
}
