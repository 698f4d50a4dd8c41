//! NVRTC compilation of the embedded kernel sources, with an on-disk CUBIN cache.
//!
//! Kernels are compiled at first use for the exact GPU (`sm_80`, `sm_86`, `sm_89`,
//! `sm_90a`, ...). The cache key hashes the sources, the architecture, the options
//! and the NVRTC version, so a change to any of them recompiles. The cache lives in
//! `$WARP_BITNET_CACHE_DIR`, else `$XDG_CACHE_HOME/warp-bitnet`, else
//! `~/.cache/warp-bitnet`; when it cannot be written, compilation still works.

use std::borrow::Cow;
use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::Levels;

/// A kernel source: a file embedded in the crate, or assembled from one (the GEMM families).
#[derive(Clone, Debug)]
pub struct Source {
    /// File name, e.g. `gemm_t2.cu`.
    pub name: &'static str,
    /// Its text.
    pub text: Cow<'static, str>,
}

/// Headers every source may include, by name.
const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("gemm.cuh", include_str!("kernels/gemm.cuh")),
    ("gemm_prefill.cuh", include_str!("kernels/gemm_prefill.cuh")),
    (
        "gemm_prefill_mma.cuh",
        include_str!("kernels/gemm_prefill_mma.cuh"),
    ),
    ("gemm_split.cuh", include_str!("kernels/gemm_split.cuh")),
    ("quant.cuh", include_str!("kernels/quant.cuh")),
    ("wgmma.cuh", include_str!("kernels/wgmma.cuh")),
];

/// Every header NVRTC is given: the embedded ones, and `constants.cuh`, generated from the
/// planner's values (`plan/constants.rs`; common.cuh includes it).
fn headers() -> Vec<(&'static str, Cow<'static, str>)> {
    let mut all: Vec<_> = HEADERS
        .iter()
        .map(|&(name, text)| (name, Cow::Borrowed(text)))
        .collect();
    all.push(("constants.cuh", Cow::Owned(super::plan::constants_header())));
    all
}

/// The GEMM template: every GEMM family is it plus its kernels' instantiation lines.
const GEMM_TEMPLATE: &str = include_str!("kernels/gemm.cu");

/// The GEMM family of `levels` (`gemm_t2.cu`, `gemm_int2.cu`): the template, a line per
/// kernel the planner can pick, and the checks that its layouts are the planner's.
pub fn gemm(levels: Levels) -> Source {
    let name = match levels {
        Levels::Ternary => "gemm_t2.cu",
        Levels::Int2 => "gemm_int2.cu",
    };
    let text = format!(
        "{GEMM_TEMPLATE}{}{}",
        super::plan::gemm_instances(levels),
        super::plan::layout_checks()
    );
    Source {
        name,
        text: Cow::Owned(text),
    }
}

/// I2 <-> T2 layout conversion, and the dense path's decode.
pub const LAYOUT: Source = Source {
    name: "layout.cu",
    text: Cow::Borrowed(include_str!("kernels/layout.cu")),
};
/// Per-token int8 activation quantization and the dense path's W2A8 epilogue.
pub const QUANT: Source = Source {
    name: "quant.cu",
    text: Cow::Borrowed(include_str!("kernels/quant.cu")),
};
/// The inference engine's row kernels: norms + quantization, RoPE + KV append, attention,
/// embedding gather, argmax.
pub const ENGINE: Source = Source {
    name: "engine.cu",
    text: Cow::Borrowed(include_str!("kernels/engine.cu")),
};

/// Every kernel source (CI compiles each for several architectures).
pub fn sources() -> Vec<Source> {
    vec![
        gemm(Levels::Ternary),
        gemm(Levels::Int2),
        LAYOUT,
        QUANT,
        ENGINE,
    ]
}

const OPTIONS: &[&str] = &["-std=c++17", "-lineinfo"];

/// The text of every embedded header and source (for tests that read the kernels).
#[cfg(test)]
pub(crate) fn embedded_texts() -> Vec<String> {
    let sources = [gemm(Levels::Ternary), LAYOUT, QUANT];
    HEADERS
        .iter()
        .map(|(_, t)| t.to_string())
        .chain(sources.into_iter().map(|s| s.text.into_owned()))
        .collect()
}

/// Whether the NVRTC library can be loaded.
pub fn is_available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc("nvrtc", "-")?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    let rc = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    check(rc, "nvrtc", "-", None)?;
    Ok((major, minor))
}

/// The one target with warpgroup MMAs (wgmma), an arch-specific feature of Hopper.
pub const WGMMA_ARCH: &str = "sm_90a";

/// The NVRTC target for compute capability `major.minor`: `sm_90a` on Hopper
/// (arch-specific features), `sm_XY` elsewhere.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        WGMMA_ARCH.to_string()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// CUBIN of `src` for `arch`, from the cache when possible.
pub fn cubin_cached(src: &Source, arch: &str) -> Result<Vec<u8>> {
    let version = nvrtc_version()?;
    let mut h = Sha256::new();
    h.update(format!("{version:?}|{arch}|{OPTIONS:?}|{}", src.name));
    h.update(src.text.as_bytes());
    for (name, text) in headers() {
        h.update(name);
        h.update(text.as_bytes());
    }
    let key: String = h
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}-{key}.cubin", src.name)));
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        return Ok(bytes);
    }
    let cubin = compile(src, arch)?;
    if let Some(p) = path {
        // Best effort: write to a temporary name, then rename, so readers never see half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let ok = p
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &cubin).is_ok();
        if !(ok && std::fs::rename(&tmp, &p).is_ok()) {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(cubin)
}

/// Compiles `src` for `arch` (e.g. `sm_90a`) and returns the CUBIN.
pub fn compile(src: &Source, arch: &str) -> Result<Vec<u8>> {
    ensure_nvrtc(src.name, arch)?;
    let cstr = |s: &str| CString::new(s).expect("embedded sources hold no NUL");
    let text = cstr(&src.text);
    let name = cstr(src.name);
    let headers = headers();
    let header_texts: Vec<CString> = headers.iter().map(|(_, t)| cstr(t)).collect();
    let header_names: Vec<CString> = headers.iter().map(|(n, _)| cstr(n)).collect();
    let texts: Vec<*const c_char> = header_texts.iter().map(|c| c.as_ptr()).collect();
    let names: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
    let mut opts: Vec<CString> = OPTIONS.iter().map(|o| cstr(o)).collect();
    opts.push(cstr(&format!("--gpu-architecture={arch}")));
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|c| c.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: all strings are NUL-terminated and outlive the call; the header arrays
    // have headers.len() entries each.
    let rc = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            text.as_ptr(),
            name.as_ptr(),
            headers.len() as i32,
            texts.as_ptr(),
            names.as_ptr(),
        )
    };
    check(rc, src.name, arch, None)?;
    let program = Program(prog);
    // SAFETY: `program` is a live program; the options outlive the call.
    let rc =
        unsafe { sys::nvrtcCompileProgram(program.0, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    check(rc, src.name, arch, Some(&program))?;
    let mut size = 0usize;
    // SAFETY: compiled program; `size` is valid for writes.
    check(
        unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) },
        src.name,
        arch,
        None,
    )?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has exactly the size NVRTC reported.
    check(
        unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()) },
        src.name,
        arch,
        None,
    )?;
    Ok(cubin)
}

/// Owns an NVRTC program; destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    fn log(&self) -> String {
        let mut size = 0usize;
        // SAFETY: live program; `size` valid for writes.
        if unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) }
            != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return String::new();
        }
        let mut buf = vec![0u8; size.max(1)];
        // SAFETY: `buf` has the size NVRTC reported (at least the NUL).
        unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr().cast()) };
        CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program is live and destroyed exactly once; errors are ignored.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

fn ensure_nvrtc(kernel: &'static str, arch: &str) -> Result<()> {
    if is_available() {
        Ok(())
    } else {
        Err(Error::Compile {
            kernel,
            arch: arch.to_string(),
            log: "libnvrtc could not be loaded (install the CUDA toolkit or the PyPI package \
                  nvidia-cuda-nvrtc and put its lib folder on LD_LIBRARY_PATH)"
                .to_string(),
        })
    }
}

fn check(
    rc: sys::nvrtcResult,
    kernel: &'static str,
    arch: &str,
    prog: Option<&Program>,
) -> Result<()> {
    if rc == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string.
    let what = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(rc)) }
        .to_string_lossy()
        .into_owned();
    let log = prog.map(Program::log).unwrap_or_default();
    Err(Error::Compile {
        kernel,
        arch: arch.to_string(),
        log: format!("{what}\n{log}"),
    })
}

fn cache_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("WARP_BITNET_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("warp-bitnet")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("warp-bitnet")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// CI installs NVRTC from PyPI (scripts/test.sh) so a kernel that does not compile cannot
    /// land. A plain `cargo test` without NVRTC skips, saying so, unless CI (`CI=true`) or
    /// scripts/test.sh (`WARP_BITNET_REQUIRE_NVRTC=1`) requires it.
    #[test]
    fn every_kernel_compiles_for_every_target() {
        if !is_available() {
            assert!(
                !nvrtc_required(
                    std::env::var("CI").ok().as_deref(),
                    std::env::var_os("WARP_BITNET_REQUIRE_NVRTC").is_some()
                ),
                "libnvrtc not found, and CI=true or WARP_BITNET_REQUIRE_NVRTC requires it: \
                 run through scripts/test.sh, which installs NVRTC from PyPI"
            );
            // Straight to stderr: libtest captures `eprintln!` of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED every_kernel_compiles_for_every_target: libnvrtc not found \
                 (scripts/test.sh installs it from PyPI and runs this test)"
            );
            return;
        }
        for arch in ["sm_80", "sm_89", "sm_90a"] {
            for src in &sources() {
                match compile(src, arch) {
                    Ok(cubin) => assert!(
                        cubin.starts_with(b"\x7fELF"),
                        "{} {arch}: not a CUBIN",
                        src.name
                    ),
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    /// Whether a missing NVRTC fails the compile test: under CI (`CI=true`, as GitHub Actions
    /// and most CI systems set it) or when scripts/test.sh requires it.
    fn nvrtc_required(ci: Option<&str>, require_flag: bool) -> bool {
        ci == Some("true") || require_flag
    }

    #[test]
    fn missing_nvrtc_skips_only_outside_ci() {
        assert!(!nvrtc_required(None, false));
        assert!(!nvrtc_required(Some("false"), false));
        assert!(nvrtc_required(Some("true"), false));
        assert!(nvrtc_required(None, true));
    }

    #[test]
    fn arch_names() {
        assert_eq!(arch_for(9, 0), "sm_90a");
        assert_eq!(arch_for(8, 9), "sm_89");
    }
}
