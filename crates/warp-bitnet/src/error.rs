//! The one error type of the crate.

/// Everything that can go wrong in `warp-bitnet`, with the detail a user needs to fix it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument's shape or length does not match what the operation needs.
    #[error("shape mismatch for `{arg}`: expected {expected}, got {got}")]
    ShapeMismatch {
        /// The argument at fault.
        arg: &'static str,
        /// What was expected, in words (e.g. "[4, 4096]").
        expected: String,
        /// What was passed.
        got: String,
    },

    /// A packed 2-bit code that no format defines (`0b11` in I2).
    #[error("invalid 2-bit code {code:#04b} at row {row}, column {col}")]
    InvalidCode {
        /// Row (output feature) of the bad weight.
        row: usize,
        /// Column (input feature) of the bad weight.
        col: usize,
        /// The code found.
        code: u8,
    },

    /// A padding position (column >= the logical width) that does not hold the zero code.
    #[error(
        "padding at row {row}, column {col} holds code {code:#04b}; padding must be zero weights"
    )]
    NonZeroPadding {
        /// Row of the bad padding.
        row: usize,
        /// Column (>= the logical number of columns).
        col: usize,
        /// The code found.
        code: u8,
    },

    /// A weight that is not -1, 0 or +1 was given to a ternary packer.
    #[error("weight at row {row}, column {col} is {value}, not -1, 0 or +1")]
    NotTernary {
        /// Row of the bad weight.
        row: usize,
        /// Column of the bad weight.
        col: usize,
        /// The value found.
        value: f32,
    },

    /// An argument has no elements where the operation needs some.
    #[error("`{arg}` is empty")]
    Empty {
        /// The argument at fault.
        arg: &'static str,
    },

    /// NaN or infinity where a finite number is required (quantizers).
    #[error("`{arg}` holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// The argument at fault.
        arg: &'static str,
        /// Flat index of the first bad element.
        index: usize,
        /// The value found.
        value: f32,
    },

    /// A size that would overflow the 32-bit indexing the kernels use.
    #[error("`{arg}` is too large: {value} exceeds the limit {limit}")]
    TooLarge {
        /// The quantity at fault.
        arg: &'static str,
        /// Its value.
        value: u64,
        /// The largest value supported.
        limit: u64,
    },

    /// A pointer or stride that breaks an alignment the kernel relies on.
    #[error("`{arg}` is misaligned: {detail}")]
    Misaligned {
        /// The argument at fault.
        arg: &'static str,
        /// What is wrong.
        detail: String,
    },

    /// A value the operation does not support (dtype, scale kind, option).
    #[error("unsupported {what}: {detail}")]
    Unsupported {
        /// The kind of thing (e.g. "dtype").
        what: &'static str,
        /// The offending value and what is accepted.
        detail: String,
    },

    /// A file that is truncated, hostile or not what it claims to be.
    #[error("bad file: {0}")]
    BadFile(String),

    /// No CUDA driver library could be loaded on this machine.
    #[error(
        "no CUDA driver found (libcuda could not be loaded); is an NVIDIA GPU and driver present?"
    )]
    NoCudaDriver,

    /// NVRTC is missing or failed to compile a kernel; `log` is the compiler's output.
    #[error("NVRTC failed to compile `{kernel}` for {arch}: {log}")]
    Compile {
        /// Kernel source file.
        kernel: &'static str,
        /// Target architecture (e.g. "sm_90a").
        arch: String,
        /// The compiler log, or why NVRTC could not be used.
        log: String,
    },

    /// A CUDA driver call failed.
    #[cfg(feature = "cuda")]
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    /// A cuBLAS call failed.
    #[cfg(feature = "cuda")]
    #[error("cuBLAS error: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),

    /// Reading or writing a file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shapes in error messages read like tensor shapes: `[4, 4096]`.
pub(crate) fn shape(dims: &[usize]) -> String {
    let inner: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", inner.join(", "))
}

/// `a * b`, or `TooLarge` naming the argument.
pub(crate) fn checked_elems(arg: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::TooLarge {
        arg,
        value: u64::MAX,
        limit: usize::MAX as u64,
    })
}

/// Checks `got == expected` for a buffer length, naming the argument.
pub(crate) fn check_len(arg: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            arg,
            expected: format!("{expected} elements"),
            got: format!("{got} elements"),
        })
    }
}
