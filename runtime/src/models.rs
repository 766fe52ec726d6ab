//! Registered models: validated, copied into `DATA/models/NAME/` (staged and renamed, so a
//! crash never leaves half a model), loaded once — onto the GPU pool's device with the most free
//! memory, or into host memory on the CPU backend — and kept resident with a dynamic batcher,
//! and loaded again at start after a restart.
//!
//! Removing a model waits until every invocation that opened it has finished.

use crate::error::{ApiError, ErrorKind};
use anyhow::{Context, Result, anyhow};
use flint_gpu::model::EmbeddingModel;
use flint_gpu::model::batcher::{BatchOptions, Batcher};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

/// What `DATA/models/NAME/registration.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    /// The model's name.
    pub name: String,
    /// The directory it was registered from.
    pub source: String,
    /// When, RFC 3339.
    pub registered_at: String,
}

/// A model in memory.
pub struct ResidentModel {
    /// Its registration.
    pub registration: Registration,
    /// The model itself.
    pub model: Arc<EmbeddingModel>,
    /// Its batcher.
    pub batcher: Batcher,
    /// Held (shared) by every invocation that opened the model; removal takes it exclusively.
    pub in_use: Arc<tokio::sync::RwLock<()>>,
    /// Bytes of its weights on disk.
    pub weight_bytes: u64,
}

/// All registered models.
pub struct ModelRegistry {
    dir: PathBuf,
    batching: BatchOptions,
    pool: Arc<flint_gpu::Pool>,
    models: RwLock<HashMap<String, Arc<ResidentModel>>>,
    changes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .list()
            .iter()
            .map(|m| m.registration.name.clone())
            .collect();
        f.debug_struct("ModelRegistry")
            .field("dir", &self.dir)
            .field("models", &names)
            .finish()
    }
}

/// Files of a model directory that are copied at registration.
const MODEL_FILES: [&str; 9] = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "modules.json",
    "config_sentence_transformers.json",
];

impl ModelRegistry {
    /// Opens `data_dir/models`, removing what a crash left half-written; models load onto
    /// `pool`'s devices.
    pub fn open(
        data_dir: &Path,
        batching: BatchOptions,
        pool: Arc<flint_gpu::Pool>,
    ) -> Result<Self> {
        let dir = data_dir.join("models");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with(".staging-") || name.starts_with(".trash-") {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(ModelRegistry {
            dir,
            batching,
            pool,
            models: RwLock::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn resident(&self, registration: Registration, dir: &Path) -> Result<ResidentModel> {
        load_resident(registration, dir, self.batching, &self.pool)
    }

    /// Loads every registered model (at start). Failures are logged and returned by name.
    pub fn load_all(&self) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return failures;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let loaded = std::fs::read(dir.join("registration.json"))
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice::<Registration>(&bytes)?))
                .and_then(|registration| self.resident(registration, &dir));
            match loaded {
                Ok(model) => {
                    tracing::info!(model = %name, dimension = model.model.dimension(), "model loaded");
                    self.models
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, Arc::new(model));
                }
                Err(error) => {
                    tracing::error!(model = %name, "failed to load: {error:#}");
                    failures.push((name, format!("{error:#}")));
                }
            }
        }
        failures
    }

    /// The model registered as `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ResidentModel>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every model, by name.
    pub fn list(&self) -> Vec<Arc<ResidentModel>> {
        let mut models: Vec<_> = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        models.sort_by(|a, b| a.registration.name.cmp(&b.registration.name));
        models
    }

    /// Validates `source`, copies it in, loads it and makes it available as `name`.
    pub async fn add(&self, name: &str, source: &Path) -> Result<Arc<ResidentModel>, ApiError> {
        crate::names::validate_name(name)
            .map_err(|e| ApiError::invalid(format!("invalid model name: {e}")))?;
        if !source.is_absolute() {
            return Err(ApiError::invalid(format!(
                "model path `{}` must be absolute (it is read by the node)",
                source.display()
            )));
        }
        if !source.is_dir() {
            return Err(ApiError::invalid(format!(
                "model directory {} does not exist",
                source.display()
            )));
        }
        let _guard = self.changes.lock().await;
        if self.get(name).is_some() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("a model named `{name}` is already registered; remove it first"),
            ));
        }
        let registration = Registration {
            name: name.to_string(),
            source: source.display().to_string(),
            registered_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
        };
        let target = self.dir.join(name);
        let staging = self.dir.join(format!(".staging-{name}"));
        let source = source.to_path_buf();
        // Validate from the source first: nothing is written unless the model loads.
        let batching = self.batching;
        let pool = self.pool.clone();
        let model = tokio::task::spawn_blocking(move || -> Result<ResidentModel, ApiError> {
            let model =
                load_resident(registration.clone(), &source, batching, &pool).map_err(|e| {
                    ApiError::invalid(format!(
                        "the model in {} is not usable: {e:#}",
                        source.display()
                    ))
                })?;
            copy_model(&source, &staging, &registration)
                .and_then(|()| {
                    std::fs::rename(&staging, &target)
                        .with_context(|| format!("moving the model into {}", target.display()))
                })
                .map_err(|e| {
                    let _ = std::fs::remove_dir_all(&staging);
                    ApiError::internal(&e)
                })?;
            Ok(model)
        })
        .await
        .map_err(|e| ApiError::internal(&anyhow!("model loader failed: {e}")))??;
        let model = Arc::new(model);
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), model.clone());
        tracing::info!(model = name, "model registered");
        Ok(model)
    }

    /// Removes `name` once every invocation using it has finished.
    pub async fn remove(&self, name: &str) -> Result<(), ApiError> {
        crate::names::validate_name(name)
            .map_err(|e| ApiError::invalid(format!("invalid model name: {e}")))?;
        let _guard = self.changes.lock().await;
        let model = self
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no model named `{name}`")))?;
        // New invocations can no longer open it; wait for the ones that did.
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let _exclusive = model.in_use.write().await;
        let dir = self.dir.join(name);
        let trash = self.dir.join(format!(".trash-{name}"));
        std::fs::rename(&dir, &trash)
            .and_then(|()| std::fs::remove_dir_all(&trash))
            .map_err(|e| ApiError::internal(&anyhow!("removing {}: {e}", dir.display())))?;
        tracing::info!(model = name, "model removed");
        Ok(())
    }

    /// What the admin API shows about a model.
    pub fn describe(model: &ResidentModel) -> serde_json::Value {
        let stats = model.batcher.stats();
        serde_json::json!({
            "name": model.registration.name,
            "kind": "sentence-embedding",
            "dimension": model.model.dimension(),
            "backend": model.model.backend(),
            "device": model.model.device_index(),
            "cpu_reason": model.model.cpu_reason(),
            "max_tokens": model.model.max_seq_length(),
            "layers": model.model.config().num_hidden_layers,
            "weight_bytes": model.weight_bytes,
            "source": model.registration.source,
            "registered_at": model.registration.registered_at,
            "requests": stats.requests.load(Ordering::Relaxed),
            "batches": stats.batches.load(Ordering::Relaxed),
            "texts": stats.texts.load(Ordering::Relaxed),
            "tokens": stats.tokens.load(Ordering::Relaxed),
        })
    }
}

/// Loads a model directory (onto `pool`'s emptiest device, if it has one) and starts its
/// batcher.
fn load_resident(
    registration: Registration,
    dir: &Path,
    batching: BatchOptions,
    pool: &flint_gpu::Pool,
) -> Result<ResidentModel> {
    let model = Arc::new(EmbeddingModel::load_on(dir, pool.device_for_model())?);
    let weight_bytes = std::fs::metadata(dir.join("model.safetensors"))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(ResidentModel {
        batcher: Batcher::start(&registration.name, model.clone(), batching),
        registration,
        model,
        in_use: Arc::new(tokio::sync::RwLock::new(())),
        weight_bytes,
    })
}

fn copy_model(source: &Path, staging: &Path, registration: &Registration) -> Result<()> {
    if staging.exists() {
        std::fs::remove_dir_all(staging)?;
    }
    std::fs::create_dir_all(staging.join("1_Pooling"))?;
    let copy = |from: &Path, to: &Path| -> Result<()> {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        }
        Ok(())
    };
    for file in MODEL_FILES {
        let from = source.join(file);
        if from.is_file() {
            copy(&from, &staging.join(file))?;
        }
    }
    let pooling = source.join("1_Pooling/config.json");
    if pooling.is_file() {
        copy(&pooling, &staging.join("1_Pooling/config.json"))?;
    }
    std::fs::write(
        staging.join("registration.json"),
        serde_json::to_vec_pretty(registration)?,
    )?;
    Ok(())
}
