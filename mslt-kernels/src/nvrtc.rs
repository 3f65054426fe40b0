//! NVRTC through `dlopen`, for the compile check of `kernels-cu/` on machines without a GPU or
//! the `cuda` feature (CI fetches the library from the `nvidia-cuda-nvrtc` wheel; see
//! `scripts/nvrtc-check.sh`). The `cuda` build compiles through cudarc instead ([`crate::cuda`]).
//!
//! The library is found through `MSLT_NVRTC_LIB` (a path) or the loader's search path
//! (`libnvrtc.so.13`, `libnvrtc.so`).

use crate::{KernelError, Source};
use std::ffi::{c_char, c_int, c_void, CStr, CString};

type Prog = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Prog) -> c_int;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type ErrStrFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// A loaded NVRTC library.
pub struct Nvrtc {
    lib: libloading::Library,
    /// Where it was loaded from.
    pub origin: String,
}

impl Nvrtc {
    /// Loads NVRTC from `MSLT_NVRTC_LIB` or the default library names.
    pub fn load() -> Result<Self, KernelError> {
        let candidates: Vec<String> = match std::env::var("MSLT_NVRTC_LIB") {
            Ok(p) => vec![p],
            Err(_) => vec!["libnvrtc.so.13".into(), "libnvrtc.so".into()],
        };
        let mut errs = Vec::new();
        for c in &candidates {
            // SAFETY: loading NVRTC runs its (trusted, side-effect free) initialisers.
            match unsafe { libloading::Library::new(c) } {
                Ok(lib) => {
                    return Ok(Self {
                        lib,
                        origin: c.clone(),
                    })
                }
                Err(e) => errs.push(format!("{c}: {e}")),
            }
        }
        Err(KernelError::NvrtcMissing(format!(
            "{} (set MSLT_NVRTC_LIB to libnvrtc.so.13; scripts/nvrtc-check.sh fetches it)",
            errs.join("; ")
        )))
    }

    fn sym<T: Copy>(&self, name: &[u8]) -> Result<T, KernelError> {
        // SAFETY: the symbol types above are NVRTC's documented C signatures.
        unsafe { self.lib.get::<T>(name) }
            .map(|s| *s)
            .map_err(|e| KernelError::NvrtcMissing(format!("{}: {e}", self.origin)))
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> Result<(i32, i32), KernelError> {
        let f: VersionFn = self.sym(b"nvrtcVersion\0")?;
        let (mut a, mut b) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { f(&mut a, &mut b) };
        Ok((a, b))
    }

    /// Compiles one source to PTX for `arch` (e.g. `sm_90`); the error carries NVRTC's log.
    pub fn compile_ptx(&self, src: &Source, arch: &str) -> Result<String, KernelError> {
        let create: CreateFn = self.sym(b"nvrtcCreateProgram\0")?;
        let compile: CompileFn = self.sym(b"nvrtcCompileProgram\0")?;
        let log_size: SizeFn = self.sym(b"nvrtcGetProgramLogSize\0")?;
        let get_log: GetFn = self.sym(b"nvrtcGetProgramLog\0")?;
        let ptx_size: SizeFn = self.sym(b"nvrtcGetPTXSize\0")?;
        let get_ptx: GetFn = self.sym(b"nvrtcGetPTX\0")?;
        let destroy: DestroyFn = self.sym(b"nvrtcDestroyProgram\0")?;
        let err_str: ErrStrFn = self.sym(b"nvrtcGetErrorString\0")?;
        let fail = |what: String, options: &[String]| KernelError::Compile {
            kernel: src.file.to_string(),
            options: options.to_vec(),
            log: what,
        };
        let options = vec![format!("--gpu-architecture={arch}")];
        let code = CString::new(src.code).map_err(|e| fail(e.to_string(), &options))?;
        let name = CString::new(src.file).expect("file names have no NUL");
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: valid C strings; no headers.
        let rc = unsafe {
            create(
                &mut prog,
                code.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            // SAFETY: NVRTC returns a static string for every result code.
            let msg = unsafe { CStr::from_ptr(err_str(rc)) }
                .to_string_lossy()
                .into_owned();
            return Err(fail(format!("nvrtcCreateProgram: {msg}"), &options));
        }
        let c_opts: Vec<CString> = options
            .iter()
            .map(|o| CString::new(o.as_str()).expect("options have no NUL"))
            .collect();
        let ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: `prog` was created above; `ptrs` outlives the call.
        let rc = unsafe { compile(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
        let result = if rc != 0 {
            let mut n = 0usize;
            // SAFETY: valid program and out-pointers; the buffer has the size NVRTC reported.
            let log = unsafe {
                log_size(prog, &mut n);
                let mut buf = vec![0u8; n.max(1)];
                get_log(prog, buf.as_mut_ptr() as *mut c_char);
                String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).into_owned()
            };
            // SAFETY: as above.
            let msg = unsafe { CStr::from_ptr(err_str(rc)) }
                .to_string_lossy()
                .into_owned();
            let hint = if msg.contains("BUILTIN") {
                " (NVRTC could not load libnvrtc-builtins: put NVRTC's lib directory on LD_LIBRARY_PATH)"
            } else {
                ""
            };
            Err(fail(format!("{msg}{hint}\n{log}"), &options))
        } else {
            let mut n = 0usize;
            // SAFETY: as above.
            let ptx = unsafe {
                ptx_size(prog, &mut n);
                let mut buf = vec![0u8; n.max(1)];
                get_ptx(prog, buf.as_mut_ptr() as *mut c_char);
                String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).into_owned()
            };
            Ok(ptx)
        };
        // SAFETY: destroys the program created above exactly once.
        unsafe { destroy(&mut prog) };
        result
    }
}

/// Compiles every source for `arch` and checks that each entry point is in the PTX.
/// Returns (file, entries, PTX bytes) per source.
pub fn check_all(nv: &Nvrtc, arch: &str) -> Result<Vec<(String, usize, usize)>, KernelError> {
    let mut out = Vec::new();
    for src in crate::SOURCES {
        let ptx = nv.compile_ptx(src, arch)?;
        for e in src.entries {
            if !ptx.contains(&format!(".entry {e}(")) {
                return Err(KernelError::Compile {
                    kernel: e.to_string(),
                    options: vec![],
                    log: format!("entry point {e} missing from the PTX of {}", src.file),
                });
            }
        }
        out.push((src.file.to_string(), src.entries.len(), ptx.len()));
    }
    Ok(out)
}

/// Per-kernel resource use reported by `ptxas -v`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxasUsage {
    pub entry: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub shared_bytes: u32,
    /// ptxas serialised the kernel's `wgmma.mma_async` ("(C75xx) Potential Performance Loss:
    /// wgmma.mma_async instructions are serialized due to ... in the function 'k'"): correct, but
    /// every `wgmma` waited for at once, the pipelining of the fa2wg3 / fa2wg4 loop lost.
    pub wgmma_serialized: bool,
}

/// Assembles `ptx` for `arch` with the `ptxas` at `ptxas` (from the CUDA toolkit or the
/// `nvidia-cuda-nvcc` wheel), as the driver's JIT does on the GPU, and reports registers,
/// spills and shared memory per kernel.
pub fn assemble(
    ptxas: &std::path::Path,
    file: &str,
    ptx: &str,
    arch: &str,
) -> Result<Vec<PtxasUsage>, KernelError> {
    let dir = std::env::temp_dir().join(format!("mslt-ptxas-{}", std::process::id()));
    let fail = |log: String| KernelError::Compile {
        kernel: file.to_string(),
        options: vec![format!("ptxas -arch={arch} -v")],
        log,
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let src = dir.join(format!("{file}.{arch}.ptx"));
    std::fs::write(&src, ptx).map_err(|e| fail(format!("{}: {e}", src.display())))?;
    let out = std::process::Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg("-o")
        .arg(dir.join(format!("{file}.{arch}.cubin")))
        .arg(&src)
        .output()
        .map_err(|e| fail(format!("running {}: {e}", ptxas.display())))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(fail(log));
    }
    Ok(parse_ptxas_log(&log))
}

/// Reads `ptxas -v` output: "Compiling entry function 'k' ...", "N bytes spill stores, M bytes
/// spill loads", "Used R registers, ... S bytes smem", and the notes that a function's `wgmma`
/// are serialised.
pub fn parse_ptxas_log(log: &str) -> Vec<PtxasUsage> {
    // the number right before `phrase` (e.g. "bytes spill stores") on `line`
    let num_before = |line: &str, phrase: &[&str]| -> u32 {
        let toks: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        toks.windows(phrase.len() + 1)
            .find(|w| &w[1..] == phrase)
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0)
    };
    let mut v: Vec<PtxasUsage> = Vec::new();
    for line in log.lines() {
        if let Some(i) = line.find("entry function '") {
            let rest = &line[i + "entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            v.push(PtxasUsage {
                entry: name,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                shared_bytes: 0,
                wgmma_serialized: false,
            });
        } else if line.contains("wgmma.mma_async instructions are serialized") {
            // names its function at the end: "... in the function 'k'"
            let name = line
                .rsplit_once("function '")
                .map(|(_, r)| r.trim_end().trim_end_matches(['\'', '.']))
                .unwrap_or("");
            let at = v.iter().position(|u| u.entry == name);
            if let Some(i) = at.or(v.len().checked_sub(1)) {
                v[i].wgmma_serialized = true;
            }
        } else if let Some(u) = v.last_mut() {
            if line.contains("spill stores") {
                u.spill_stores = num_before(line, &["bytes", "spill", "stores"]);
                u.spill_loads = num_before(line, &["bytes", "spill", "loads"]);
            }
            if line.contains("Used") && line.contains("registers") {
                u.registers = num_before(line, &["registers"]);
                u.shared_bytes = num_before(line, &["bytes", "smem"]);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn ptxas_log_is_parsed_per_entry() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'attention_fwd_bf16_d64_fa2' for 'sm_90'\n\
ptxas info    : Function properties for attention_fwd_bf16_d64_fa2\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 128 registers, used 1 barriers, 46592 bytes smem, 380 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
ptxas info    : Function properties for k2\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 31 registers, 380 bytes cmem[0]\n";
        let u = super::parse_ptxas_log(log);
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].entry, "attention_fwd_bf16_d64_fa2");
        assert_eq!(
            (
                u[0].registers,
                u[0].spill_stores,
                u[0].spill_loads,
                u[0].shared_bytes
            ),
            (128, 4, 12, 46592)
        );
        assert_eq!(
            (u[1].entry.as_str(), u[1].registers, u[1].shared_bytes),
            ("k2", 31, 0)
        );
        assert!(!u[0].wgmma_serialized && !u[1].wgmma_serialized);
        // the note names its function (as CUDA 12.x / 13.0 ptxas print it)
        let log = format!(
            "{log}ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are \
serialized due to non wgmma instructions defining accumulator registers of a wgmma between start and \
end of the pipeline stage in the function 'attention_fwd_bf16_d64_fa2'\n"
        );
        let u = super::parse_ptxas_log(&log);
        assert!(u[0].wgmma_serialized && !u[1].wgmma_serialized);
    }
}
