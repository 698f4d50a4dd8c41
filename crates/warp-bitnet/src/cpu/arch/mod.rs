//! Instruction-set dispatch for the fast CPU kernels (memchr's shape).
//!
//! The algorithm (tiling over rows and tokens, threads, epilogues) lives once in
//! [`crate::cpu::gemm`]; each instruction set supplies only two row micro-kernels over the
//! C2 layout ([`crate::cpu::layout`], docs/FORMATS.md "C2"):
//!
//! - `tile_i8`: `acc[r, t] = sum_k u[r, k] * x[t * stride + k]` exactly in `i32`, for int8
//!   `x`, over a tile of rows x tokens ([`Tile`]: up to four accumulators, or 2 x 4);
//! - `row_f32`: `acc[t] = sum_k (a * u[k] + b) * x[t * stride + k]` in `f32` for one row
//!   and up to [`MAX_TILE`] tokens,
//!
//! for the rows' unsigned codes `u`. [`portable`] is plain
//! Rust (and what non-x86 targets run); `x86_64::avx2` is the AVX2 instantiation. The
//! instruction set is detected once ([`Isa::detect`]); `WARP_BITNET_CPU_ISA` forces one.

pub mod dense;
pub mod host;
pub mod portable;
pub(crate) mod spin_pool;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Most tokens one micro-kernel call accumulates.
pub const MAX_TILE: usize = 4;

/// Most (row, token) accumulators of one micro-kernel call: the prefill tile, 2 rows x 4 tokens.
pub const MAX_PAIRS: usize = 8;

/// The shape of one micro-kernel call: `rows` consecutive C2 rows at `tokens` tokens. Passed
/// explicitly rather than derived from slice lengths: the divisions that derived it cost
/// ~100 cycles per call, a third of a 2560-column tile (docs/NOTES.md, "CPU v5").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Rows, at least 1.
    pub rows: usize,
    /// Tokens, 1..=[`MAX_TILE`].
    pub tokens: usize,
}

impl Tile {
    /// The tile of `rows` rows that the algorithm uses at `tokens` tokens: four rows at one
    /// token (one activation load feeds four rows), two at two, one at three, and two at four
    /// (prefill: one decode feeds four tokens, one activation load two rows).
    pub fn at(tokens: usize) -> Tile {
        let rows = match tokens {
            1 => 4,
            2 | 4 => 2,
            _ => 1,
        };
        Tile { rows, tokens }
    }

    /// Accumulators of the tile: `rows * tokens`.
    pub fn pairs(self) -> usize {
        self.rows * self.tokens
    }

    /// Whether every instruction set has a kernel of this shape: any shape of up to four
    /// accumulators, and 2 rows x 4 tokens.
    pub fn is_supported(self) -> bool {
        self.rows >= 1
            && (1..=MAX_TILE).contains(&self.tokens)
            && (self.pairs() <= 4 || (self.rows, self.tokens) == (2, 4))
    }
}

/// Weights per C2 block: 32 bytes, four 2-bit planes.
pub const BLOCK: usize = 128;

/// Bytes per C2 block.
pub const BLOCK_BYTES: usize = 32;

/// An instruction set the fast CPU kernels have an instantiation for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, any target: the fallback.
    Portable,
    /// x86-64 AVX2 (256-bit integer `vpmaddubsw`, FMA).
    Avx2,
}

impl Isa {
    /// Every instruction set, slowest first.
    pub const ALL: [Isa; 2] = [Isa::Portable, Isa::Avx2];

    /// The name used by `WARP_BITNET_CPU_ISA` and in benchmark rows.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
        }
    }

    /// Parses a name as written by [`Isa::name`] (case-insensitive).
    pub fn from_name(s: &str) -> Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::Unsupported {
                what: "WARP_BITNET_CPU_ISA",
                detail: format!(
                    "{s:?}; expected one of {}",
                    Isa::ALL.map(Isa::name).join(", ")
                ),
            })
    }

    /// Whether this CPU can run the instantiation (checked at run time).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
        }
    }

    /// The instruction sets this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The best available instruction set, or the one `WARP_BITNET_CPU_ISA` names
    /// (an error if it is unknown or this CPU lacks it). Detected once per process.
    pub fn detect() -> Result<Isa> {
        static CHOSEN: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
        let chosen = CHOSEN.get_or_init(|| match std::env::var("WARP_BITNET_CPU_ISA") {
            Ok(name) => Isa::from_name(&name)
                .and_then(Isa::require)
                .map_err(|e| e.to_string()),
            Err(_) => Ok(*Isa::available()
                .last()
                .expect("portable is always available")),
        });
        chosen.clone().map_err(|detail| Error::Unsupported {
            what: "CPU instruction set",
            detail,
        })
    }

    /// `self` if this CPU can run it, else an error naming it.
    pub fn require(self) -> Result<Isa> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(Error::Unsupported {
                what: "CPU instruction set",
                detail: format!(
                    "{} is not available on this CPU (available: {})",
                    self.name(),
                    Isa::available()
                        .iter()
                        .map(|i| i.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }
}

/// The micro-kernels of one instruction set; only constructible where the CPU runs them.
#[derive(Clone, Copy, Debug)]
pub struct Micro {
    isa: Isa,
}

impl Micro {
    /// The micro-kernels of `isa`, or `None` if this CPU lacks it.
    pub fn new(isa: Isa) -> Option<Micro> {
        isa.is_available().then_some(Micro { isa })
    }

    /// Which instruction set runs.
    pub fn isa(self) -> Isa {
        self.isa
    }

    /// `acc[r * tile.tokens + t] = sum_k u[r, k] * x[t * stride + k]` exactly in `i32`, for
    /// the codes `u` of the `tile.rows` consecutive C2 rows in `rows` (`row_bytes` each).
    ///
    /// # Panics
    /// If `row_bytes` is not a whole number (>= 1) of blocks, `tile` not
    /// [`Tile::is_supported`], `rows` not `tile.rows` rows, `acc` not `tile.pairs()` long, or `x`
    /// shorter than the tile.
    #[inline]
    pub fn tile_i8(
        self,
        rows: &[u8],
        row_bytes: usize,
        tile: Tile,
        x: &[i8],
        stride: usize,
        acc: &mut [i32],
    ) {
        assert!(tile.is_supported(), "no kernel for a tile of {tile:?}");
        assert!(
            rows.len() == tile.rows * row_bytes && acc.len() == tile.pairs(),
            "{} bytes and {} outputs for a tile of {tile:?} and rows of {row_bytes} bytes",
            rows.len(),
            acc.len()
        );
        check_tile(row_bytes, x.len(), stride, tile.tokens);
        match self.isa {
            Isa::Portable => portable::tile_i8(rows, row_bytes, tile, x, stride, acc),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Micro` of `Isa::Avx2` exists only where `Isa::Avx2.is_available()`
            // (AVX2 and FMA detected); the checks above bound every read of `x` and `rows`
            // and the tile's shape.
            Isa::Avx2 => unsafe { x86_64::avx2::tile_i8(rows, row_bytes, tile, x, stride, acc) },
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => unreachable!("Micro::new refuses AVX2 off x86-64"),
        }
    }

    /// `acc[t] = sum_k (a * u[k] + b) * x[t * stride + k]` in `f32` for one C2 row.
    ///
    /// # Panics
    /// If `acc` holds 0 or more than [`MAX_TILE`] tokens, `row` is not whole blocks, or `x`
    /// is shorter than the tile.
    #[inline]
    pub fn row_f32(self, row: &[u8], x: &[f32], stride: usize, ab: (f32, f32), acc: &mut [f32]) {
        check_tile(row.len(), x.len(), stride, acc.len());
        match self.isa {
            Isa::Portable => portable::row_f32(row, x, stride, ab, acc),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected (`Micro::new`), lengths checked above.
            Isa::Avx2 => unsafe { x86_64::avx2::row_f32(row, x, stride, ab, acc) },
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => unreachable!("Micro::new refuses AVX2 off x86-64"),
        }
    }
}

/// `sum_k a[k] * b[k]` in f32 over `min(a.len(), b.len())` elements, with the best
/// instruction set of this CPU: the dense baselines' dot product (`bench::cpu`), so that they
/// are vectorized as well as a BLAS sgemv would be.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.is_available() {
        // SAFETY: AVX2 and FMA detected; both slices hold `n` elements.
        return unsafe { x86_64::avx2::dot_f32(a, b) };
    }
    portable::dot_f32(a, b)
}

/// The bounds every micro-kernel relies on: whole blocks, a tile of 1..=MAX_TILE tokens,
/// and `x` holding `stride * (tile - 1) + padded columns` elements.
fn check_tile(row_bytes: usize, x_len: usize, stride: usize, tile: usize) {
    let cols = row_bytes * (BLOCK / BLOCK_BYTES);
    assert!(
        row_bytes > 0 && row_bytes % BLOCK_BYTES == 0,
        "C2 rows are whole blocks"
    );
    assert!((1..=MAX_TILE).contains(&tile), "token tile of {tile}");
    assert!(
        stride >= cols,
        "token stride {stride} < padded columns {cols}"
    );
    assert!(
        x_len >= stride * (tile - 1) + cols,
        "activations too short for the tile"
    );
}
