//! The pool (devices and their memory) and sessions (one invocation's view of it).

use crate::cpu::CpuBuffer;
use crate::cuda::{self, CudaDevice};
use crate::dtype::DType;
use crate::error::{ErrorKind, GpuError, GpuResult};
use crate::memory::{Holdings, MemoryBudget, Reservation};
use crate::shape;
use crate::tensor::{Storage, Tensor};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the pool is set up.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Memory the CPU backend may hand out to tensors, in bytes.
    pub cpu_memory_bytes: u64,
    /// Use the CPU backend even if a CUDA device is present.
    pub force_cpu: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            cpu_memory_bytes: 4 << 30,
            force_cpu: false,
        }
    }
}

/// One device of the pool as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Index in the pool.
    pub index: usize,
    /// `cuda` or `cpu`.
    pub backend: &'static str,
    /// The device's name.
    pub name: String,
    /// Bytes tensors may use on it.
    pub capacity_bytes: u64,
    /// Bytes tensors use now.
    pub used_bytes: u64,
    /// The most bytes used at once.
    pub peak_bytes: u64,
    /// Time spent in GPU work on it since the node started, summed over invocations.
    pub busy: Duration,
    /// Whether it is out of service: a fault poisoned its context and no new one is ready
    /// (GPU work runs on the CPU backend meanwhile).
    pub faulted: bool,
    /// Why it is out of service, while it is.
    pub fault: Option<String>,
    /// How many times a poisoned context was replaced by a working one.
    pub context_rebuilds: u64,
}

enum Backend {
    Cpu {
        budget: Arc<MemoryBudget>,
    },
    Cuda {
        devices: Vec<Arc<CudaDevice>>,
        /// Host memory for sessions that run on the CPU while no device is in service.
        fallback: Arc<MemoryBudget>,
    },
}

/// The GPU pool: every device, shared by every invocation.
pub struct Pool {
    backend: Backend,
    /// Microseconds of GPU work per device index.
    busy_us: Vec<AtomicU64>,
    /// Why CUDA is not used, when it is not.
    cpu_reason: Option<String>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &self.backend())
            .field("devices", &self.devices())
            .finish()
    }
}

/// Limits of one session.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// The invocation's quota in bytes.
    pub invocation_bytes: u64,
    /// The function's quota, shared by its concurrent invocations (if it has one).
    pub function: Option<Arc<MemoryBudget>>,
    /// Whether custom kernels may be compiled and launched.
    pub allow_kernels: bool,
    /// Where what the session allocates is shown per holder (the function), if anywhere.
    pub holder: Option<Arc<Holdings>>,
}

enum Placement {
    Cpu,
    Cuda(cuda::StreamLease),
}

/// One invocation's view of the pool.
pub struct Session {
    placement: Placement,
    budgets: Vec<Arc<MemoryBudget>>,
    invocation: Arc<MemoryBudget>,
    allow_kernels: bool,
    device_name: String,
    device_index: usize,
}

/// A compiled custom kernel.
pub struct Kernel {
    pub(crate) inner: Arc<cuda::CompiledKernel>,
}

/// An argument of a custom kernel launch.
pub enum KernelArg<'a> {
    /// A tensor, passed as a device pointer.
    Tensor(&'a Tensor),
    /// f32.
    F32(f32),
    /// f64.
    F64(f64),
    /// i32.
    I32(i32),
    /// u32.
    U32(u32),
    /// i64.
    I64(i64),
    /// u64.
    U64(u64),
}

impl Pool {
    /// Finds the CUDA devices (or settles for the CPU backend), logging what it found. Never
    /// panics, whether or not CUDA is installed.
    pub fn probe(options: PoolOptions) -> Arc<Pool> {
        let probed = if options.force_cpu {
            Err("the CPU backend was requested".to_string())
        } else {
            cuda::probe()
        };
        let pool = match probed {
            Ok(devices) if !devices.is_empty() => {
                for device in &devices {
                    tracing::info!(
                        "GPU {}: {} ({} MiB, {})",
                        device.ordinal(),
                        device.name(),
                        device.budget().limit() >> 20,
                        device.arch()
                    );
                }
                Pool {
                    busy_us: devices.iter().map(|_| AtomicU64::new(0)).collect(),
                    backend: Backend::Cuda {
                        devices,
                        fallback: MemoryBudget::new(
                            "CPU backend's memory (while no GPU is in service)",
                            options.cpu_memory_bytes,
                        ),
                    },
                    cpu_reason: None,
                }
            }
            Ok(_) => Pool::cpu(&options, "no CUDA device".to_string()),
            Err(reason) => Pool::cpu(&options, reason),
        };
        if let Some(reason) = &pool.cpu_reason {
            tracing::info!(
                "no CUDA device: CPU backend ({reason}); tensors may use {} MiB",
                options.cpu_memory_bytes >> 20
            );
        }
        Arc::new(pool)
    }

    fn cpu(options: &PoolOptions, reason: String) -> Pool {
        Pool {
            busy_us: vec![AtomicU64::new(0)],
            backend: Backend::Cpu {
                budget: MemoryBudget::new("CPU backend's memory", options.cpu_memory_bytes),
            },
            cpu_reason: Some(reason),
        }
    }

    /// A pool on the CPU backend only (tests and GPU-less nodes).
    pub fn cpu_only(cpu_memory_bytes: u64) -> Arc<Pool> {
        Pool::probe(PoolOptions {
            cpu_memory_bytes,
            force_cpu: true,
        })
    }

    /// `cuda` or `cpu`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Cpu { .. } => "cpu",
            Backend::Cuda { .. } => "cuda",
        }
    }

    /// Why the CPU backend is used, if it is.
    pub fn cpu_reason(&self) -> Option<&str> {
        self.cpu_reason.as_deref()
    }

    /// Every device with its memory use.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        match &self.backend {
            Backend::Cpu { budget } => vec![DeviceInfo {
                index: 0,
                backend: "cpu",
                name: "CPU backend".to_string(),
                capacity_bytes: budget.limit(),
                used_bytes: budget.used(),
                peak_bytes: budget.peak(),
                busy: self.busy(0),
                faulted: false,
                fault: None,
                context_rebuilds: 0,
            }],
            Backend::Cuda { devices, .. } => devices
                .iter()
                .enumerate()
                .map(|(index, d)| DeviceInfo {
                    index,
                    backend: "cuda",
                    name: d.name().to_string(),
                    capacity_bytes: d.budget().limit(),
                    used_bytes: d.budget().used(),
                    peak_bytes: d.budget().peak(),
                    busy: self.busy(index),
                    faulted: d.is_faulted(),
                    fault: d.fault_reason(),
                    context_rebuilds: d.context_rebuilds(),
                })
                .collect(),
        }
    }

    /// Time spent in GPU work on device `index` since the pool was made: on a CUDA device what
    /// CUDA events measured of every session's work (collected when sessions end), on the CPU
    /// backend the compute time reported with [`Pool::record_busy`].
    pub fn busy(&self, index: usize) -> Duration {
        let recorded = self.busy_us.get(index).map_or(Duration::ZERO, |us| {
            Duration::from_micros(us.load(Ordering::Relaxed))
        });
        let measured = match &self.backend {
            Backend::Cuda { devices, .. } => {
                devices.get(index).map_or(Duration::ZERO, |d| d.busy())
            }
            Backend::Cpu { .. } => Duration::ZERO,
        };
        recorded + measured
    }

    /// Adds `duration` of work measured by the caller (CPU backend compute) to device
    /// `index`'s busy time.
    pub fn record_busy(&self, index: usize, duration: Duration) {
        if let Some(us) = self.busy_us.get(index) {
            us.fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Bytes in use by tensors on all devices.
    pub fn used_bytes(&self) -> u64 {
        self.devices().iter().map(|d| d.used_bytes).sum()
    }

    /// The CUDA device a resident model should load onto (the one with the most free memory
    /// that has not faulted), with its pool index; `None` on the CPU backend.
    pub fn device_for_model(&self) -> Option<(usize, Arc<CudaDevice>)> {
        match &self.backend {
            Backend::Cpu { .. } => None,
            Backend::Cuda { devices, .. } => devices
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.is_faulted())
                .max_by_key(|(_, d)| d.budget().available())
                .map(|(index, device)| (index, device.clone())),
        }
    }

    /// Opens a session on the least loaded device that is in service. While none is (a fault
    /// took every device out), the session runs on the CPU backend: built-in ops and models
    /// keep answering, slower, and custom kernels say they need a GPU. CUDA cannot bring a
    /// device back in the process that faulted it, so that lasts until the node restarts.
    pub fn session(&self, limits: SessionLimits) -> GpuResult<Session> {
        let invocation =
            MemoryBudget::new("invocation's GPU memory quota", limits.invocation_bytes);
        let mut budgets = vec![invocation.clone()];
        budgets.extend(limits.function.clone());
        let (placement, device_name, device_index) = match &self.backend {
            Backend::Cpu { budget } => {
                budgets.push(budget.clone());
                (Placement::Cpu, "CPU backend".to_string(), 0)
            }
            Backend::Cuda { devices, fallback } => {
                let in_service = devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| !d.is_faulted())
                    .min_by_key(|(_, d)| (d.budget().used(), d.active_sessions()));
                match in_service {
                    Some((index, device)) => {
                        budgets.push(device.budget().clone());
                        let lease = device.lease_stream()?;
                        (Placement::Cuda(lease), device.name().to_string(), index)
                    }
                    None => {
                        budgets.push(fallback.clone());
                        let name = "CPU backend (no GPU in service after a fault)".to_string();
                        (Placement::Cpu, name, 0)
                    }
                }
            }
        };
        budgets.extend(limits.holder.as_ref().map(|h| h.on_device(device_index)));
        Ok(Session {
            placement,
            budgets,
            invocation,
            allow_kernels: limits.allow_kernels,
            device_name,
            device_index,
        })
    }
}

impl Session {
    /// `cuda` or `cpu`.
    pub fn backend(&self) -> &'static str {
        match self.placement {
            Placement::Cpu => "cpu",
            Placement::Cuda(_) => "cuda",
        }
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The device's index in the pool.
    pub fn device_index(&self) -> usize {
        self.device_index
    }

    /// Whether the session's GPU time is measured on the device (CUDA events), so callers
    /// must not count their own wall time of its calls as GPU time.
    pub fn measures_device_time(&self) -> bool {
        matches!(self.placement, Placement::Cuda(_))
    }

    /// GPU time of this session's work, measured with CUDA events on its stream (waits for the
    /// work enqueued so far). Zero on the CPU backend, where callers time the calls themselves.
    pub fn device_time(&self) -> Duration {
        match &self.placement {
            Placement::Cuda(lease) => lease.device_time(),
            Placement::Cpu => Duration::ZERO,
        }
    }

    /// Bytes this invocation may still allocate (the tightest of its budgets).
    pub fn quota_left(&self) -> u64 {
        self.budgets
            .iter()
            .map(|b| b.available())
            .min()
            .unwrap_or(0)
    }

    /// The most bytes this invocation held at once.
    pub fn peak_bytes(&self) -> u64 {
        self.invocation.peak()
    }

    /// Bytes this invocation held, integrated over time (byte-seconds).
    pub fn byte_seconds(&self) -> f64 {
        self.invocation.byte_seconds()
    }

    pub(crate) fn reserve(&self, bytes: u64) -> GpuResult<Reservation> {
        Reservation::new(&self.budgets, bytes)
    }

    pub(crate) fn cuda(&self) -> Option<&cuda::StreamLease> {
        match &self.placement {
            Placement::Cuda(lease) => Some(lease),
            Placement::Cpu => None,
        }
    }

    /// A tensor from little-endian bytes.
    pub fn upload(&self, dtype: DType, dims: &[u32], data: &[u8]) -> GpuResult<Tensor> {
        let (shape, count) = shape::checked(dims)?;
        let expected = count * dtype.size();
        if data.len() != expected {
            return Err(GpuError::invalid(format!(
                "{dtype}{dims:?} needs {expected} bytes; got {}",
                data.len()
            )));
        }
        let reservation = self.reserve(expected as u64)?;
        let storage = match &self.placement {
            Placement::Cpu => Storage::Cpu(CpuBuffer::from_bytes(data)),
            Placement::Cuda(lease) => Storage::Cuda(lease.upload(data)?),
        };
        Ok(Tensor {
            dtype,
            shape,
            storage,
            reservation,
        })
    }

    /// A tensor of zeros.
    pub fn zeros(&self, dtype: DType, dims: &[u32]) -> GpuResult<Tensor> {
        let (shape, count) = shape::checked(dims)?;
        let bytes = count * dtype.size();
        let reservation = self.reserve(bytes as u64)?;
        let storage = match &self.placement {
            Placement::Cpu => Storage::Cpu(CpuBuffer::zeroed(bytes)),
            Placement::Cuda(lease) => Storage::Cuda(lease.zeros(bytes)?),
        };
        Ok(Tensor {
            dtype,
            shape,
            storage,
            reservation,
        })
    }

    /// An f32 tensor from values (convenience for hosts and tests).
    pub fn upload_f32(&self, dims: &[u32], values: &[f32]) -> GpuResult<Tensor> {
        self.upload(DType::F32, dims, bytemuck::cast_slice(values))
    }

    /// The tensor's bytes.
    pub fn download(&self, tensor: &Tensor) -> GpuResult<Vec<u8>> {
        match (&tensor.storage, &self.placement) {
            (Storage::Cpu(buffer), _) => Ok(buffer.bytes().to_vec()),
            (Storage::Cuda(buffer), Placement::Cuda(lease)) => lease.download(buffer),
            (Storage::Cuda(_), Placement::Cpu) => {
                Err(GpuError::invalid("the tensor belongs to another device"))
            }
        }
    }

    /// The tensor's values (it must be f32).
    pub fn download_f32(&self, tensor: &Tensor) -> GpuResult<Vec<f32>> {
        if tensor.dtype != DType::F32 {
            return Err(GpuError::invalid(format!(
                "expected f32, got {}",
                tensor.describe()
            )));
        }
        let bytes = self.download(tensor)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Compiles a custom CUDA kernel (needs the kernel capability and a CUDA device).
    pub fn compile_kernel(&self, source: &str, entry: &str) -> GpuResult<Kernel> {
        if !self.allow_kernels {
            return Err(GpuError::new(
                ErrorKind::PermissionDenied,
                "custom kernels are off for this function; the operator grants them with \
                 `fnctl deploy --allow-kernels` (a kernel runs native code in a device context \
                 shared with other tenants)",
            ));
        }
        match &self.placement {
            Placement::Cpu => Err(GpuError::unsupported(
                "custom CUDA kernels need a CUDA device, and this invocation runs on the CPU \
                 backend (the node has no GPU, or none is in service)",
            )),
            Placement::Cuda(lease) => Ok(Kernel {
                inner: lease.compile(source, entry)?,
            }),
        }
    }

    /// Launches a custom kernel on this invocation's stream and waits for it.
    pub fn launch(
        &self,
        kernel: &Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_mem_bytes: u32,
        args: &[KernelArg<'_>],
    ) -> GpuResult<()> {
        self.enqueue_launch(kernel, grid, block, shared_mem_bytes, args)?;
        self.synchronize()
    }

    /// Waits for all the work this invocation enqueued (a kernel's fault shows here).
    pub fn synchronize(&self) -> GpuResult<()> {
        match &self.placement {
            Placement::Cpu => Ok(()),
            Placement::Cuda(lease) => lease.synchronize(),
        }
    }

    /// Whether this invocation's enqueued work has finished, so that a copy would not wait
    /// for it (always, on the CPU). A fault counts as finished: the next call reports it.
    pub fn is_idle(&self) -> bool {
        match &self.placement {
            Placement::Cpu => true,
            Placement::Cuda(lease) => lease.poll_idle().unwrap_or(true),
        }
    }

    /// Polls for up to `spin` until this invocation's work has finished: `Some` with the
    /// outcome if it did, `None` if it still runs (wait with [`Session::synchronize`], off the
    /// async threads).
    pub fn wait_briefly(&self, spin: std::time::Duration) -> Option<GpuResult<()>> {
        match &self.placement {
            Placement::Cpu => Some(Ok(())),
            Placement::Cuda(lease) => lease.wait_briefly(spin),
        }
    }

    /// Enqueues a custom kernel on this invocation's stream without waiting for it (see
    /// [`Session::wait_briefly`] and [`Session::synchronize`]).
    pub fn enqueue_launch(
        &self,
        kernel: &Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_mem_bytes: u32,
        args: &[KernelArg<'_>],
    ) -> GpuResult<()> {
        if !self.allow_kernels {
            return Err(GpuError::new(
                ErrorKind::PermissionDenied,
                "custom kernels are off for this function",
            ));
        }
        match &self.placement {
            Placement::Cpu => Err(GpuError::unsupported(
                "custom CUDA kernels need a CUDA device",
            )),
            Placement::Cuda(lease) => {
                lease.enqueue_launch(&kernel.inner, grid, block, shared_mem_bytes, args)
            }
        }
    }
}
