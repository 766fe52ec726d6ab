//! Runtime compilation of CUDA C with NVRTC, straight to a CUBIN for the device's own
//! architecture (`sm_90`), not to PTX.
//!
//! PTX is compiled once more by the driver's JIT when the module loads, and a driver only reads
//! PTX up to the ISA version of its own CUDA release: the PTX of NVRTC 13.2 (ISA 9.2) does not
//! load on a CUDA 13.0 driver (580), `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`. That is what a node
//! gets when a newer NVRTC is first on its library path (a PyTorch wheel's, say). A CUBIN is
//! machine code for one architecture, which CUDA's minor version compatibility lets any driver
//! of the same major release load, and loading it skips the JIT. NVIDIA's best practices guide
//! recommends the same for NVRTC ("dynamic code generation").
//!
//! NVRTC needs no device, so all of this also runs on machines without a GPU.

use crate::error::{ErrorKind, GpuError, GpuResult};
use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString, c_int};

/// CUDA machine code (an ELF image) for one GPU architecture, made by [`compile`].
#[derive(Clone)]
pub struct Cubin {
    arch: String,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Cubin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cubin({}, {} bytes)", self.arch, self.bytes.len())
    }
}

impl Cubin {
    /// The architecture it was compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The ELF image, as `cuModuleLoadData` takes it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The image in the form cudarc loads (`CudaContext::load_module`).
    pub fn into_module_image(self) -> cudarc::nvrtc::Ptx {
        cudarc::nvrtc::Ptx::from_binary(self.bytes)
    }
}

/// Whether NVRTC can be loaded; the reason if not.
pub fn available() -> Result<(), String> {
    // SAFETY: this only tries to dlopen the library.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err("NVRTC (libnvrtc) was not found".into())
    }
}

/// The version of the NVRTC that was loaded, e.g. `(13, 0)`; `None` without one.
pub fn version() -> Option<(i32, i32)> {
    available().ok()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: NVRTC is present; both pointers are valid for writes.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .ok()?;
    Some((major, minor))
}

/// The architectures the loaded NVRTC compiles for, e.g. `[75, 80, ..., 120]` for `sm_75`...;
/// empty without NVRTC.
pub fn supported_architectures() -> Vec<i32> {
    if available().is_err() {
        return Vec::new();
    }
    let mut count: c_int = 0;
    // SAFETY: NVRTC is present; `archs` has the room NVRTC said it needs.
    unsafe {
        if sys::nvrtcGetNumSupportedArchs(&mut count).result().is_err() || count <= 0 {
            return Vec::new();
        }
        let mut archs = vec![0 as c_int; count as usize];
        if sys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
            .result()
            .is_err()
        {
            return Vec::new();
        }
        archs
    }
}

/// One NVRTC program, destroyed on drop.
struct Program {
    handle: sys::nvrtcProgram,
    // NVRTC may keep pointers into the source until the program is destroyed.
    _source: CString,
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by `create_program` and destroyed only here. A failure to free
        // leaks the program; there is nothing else to do about it in a destructor.
        if let Err(error) = unsafe { result::destroy_program(self.handle) } {
            tracing::warn!(?error, "NVRTC could not destroy a program");
        }
    }
}

impl Program {
    fn log(&self) -> String {
        // SAFETY: a live program.
        match unsafe { result::get_program_log(self.handle) } {
            Ok(log) => {
                let bytes: Vec<u8> = log.iter().map(|&c| c as u8).collect();
                CStr::from_bytes_until_nul(&bytes)
                    .map(|log| log.to_string_lossy().trim().to_string())
                    .unwrap_or_default()
            }
            Err(error) => format!("(NVRTC gave no log: {error:?})"),
        }
    }

    fn cubin(&self) -> Result<Vec<u8>, result::NvrtcError> {
        let mut size = 0usize;
        // SAFETY: a compiled program; `bytes` has the size NVRTC asked for.
        unsafe {
            sys::nvrtcGetCUBINSize(self.handle, &mut size).result()?;
            let mut bytes = vec![0u8; size];
            sys::nvrtcGetCUBIN(self.handle, bytes.as_mut_ptr().cast()).result()?;
            Ok(bytes)
        }
    }
}

/// Compiles CUDA C for `arch`, a real architecture such as `sm_90`; a failure carries NVRTC's
/// log (`compile-error`).
pub fn compile(source: &str, arch: &str) -> GpuResult<Cubin> {
    let sm = arch.strip_prefix("sm_").unwrap_or("");
    if sm.is_empty() || !sm.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(GpuError::invalid(format!(
            "`{arch}` is not a GPU architecture such as `sm_90`"
        )));
    }
    available().map_err(|reason| GpuError::new(ErrorKind::CompileError, reason))?;
    let source = CString::new(source)
        .map_err(|_| GpuError::invalid("kernel source must not contain NUL bytes"))?;
    let handle = result::create_program(&source, None).map_err(|e| {
        GpuError::new(
            ErrorKind::CompileError,
            format!("NVRTC could not create a program: {e:?}"),
        )
    })?;
    let program = Program {
        handle,
        _source: source,
    };
    let options = [format!("--gpu-architecture={arch}")];
    // SAFETY: a live program.
    if let Err(error) = unsafe { result::compile_program(program.handle, &options) } {
        let log = program.log();
        let nvrtc = version().map_or("NVRTC".to_string(), |(major, minor)| {
            format!("NVRTC {major}.{minor}")
        });
        let supported = supported_architectures();
        let hint = match (supported.first(), supported.last()) {
            (Some(oldest), Some(newest)) if !supported.iter().any(|a| sm == a.to_string()) => {
                format!(" ({nvrtc} compiles for sm_{oldest} to sm_{newest}, not for {arch})")
            }
            _ => String::new(),
        };
        return Err(GpuError::new(
            ErrorKind::CompileError,
            format!(
                "{nvrtc} failed to compile the kernel for {arch}{hint}, {:?}:\n{log}",
                error.0
            ),
        ));
    }
    let bytes = program.cubin().map_err(|e| {
        GpuError::new(
            ErrorKind::CompileError,
            format!("NVRTC compiled the kernel but gave no CUBIN for {arch}: {e:?}"),
        )
    })?;
    Ok(Cubin {
        arch: arch.to_string(),
        bytes,
    })
}
