//! Memory the engine may take: the host's available memory, and how many KV-cache slots fit
//! a share of the memory left (vLLM's `gpu_memory_utilization`, llama.cpp's `--parallel`
//! sized by hand; here the engine can size the pool itself, [`super::EngineOptions::memory_fraction`]).

use crate::error::{Error, Result};

/// The memory the kernel says can be allocated without swapping (`MemAvailable` of
/// /proc/meminfo), where there is such a file.
pub(crate) fn available_host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks a `memory_fraction` option: a share in (0, 1].
pub(crate) fn check_fraction(fraction: f64) -> Result<()> {
    if fraction > 0.0 && fraction <= 1.0 {
        Ok(())
    } else {
        Err(Error::Unsupported {
            what: "memory_fraction",
            detail: format!("{fraction}; must be a share of the free memory in (0, 1]"),
        })
    }
}

/// The most slots in `1..=max` whose memory, `bytes(slots)` (non-decreasing in `slots`), fits
/// `fraction` of `free` bytes; an error when even one slot does not.
pub(crate) fn fit_slots(
    max: usize,
    fraction: f64,
    free: u64,
    bytes: impl Fn(usize) -> Result<u64>,
) -> Result<usize> {
    check_fraction(fraction)?;
    let budget = (free as f64 * fraction) as u64;
    let one = bytes(1)?;
    if one > budget {
        return Err(Error::TooLarge {
            arg: "memory for one KV-cache slot, with the weights and buffers (bytes; lower \
                  max_context or raise memory_fraction)",
            value: one,
            limit: budget,
        });
    }
    // Binary search for the last count that fits: `lo` always fits, `hi + 1` never does.
    let (mut lo, mut hi) = (1, max.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match bytes(mid) {
            Ok(b) if b <= budget => lo = mid,
            _ => hi = mid - 1,
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_most_slots_under_the_budget() {
        // 100 bytes of weights, 30 per slot: 1000 * 0.5 = 500 fits 13 slots (490).
        let bytes = |s: usize| Ok(100 + 30 * s as u64);
        assert_eq!(fit_slots(64, 0.5, 1000, bytes).unwrap(), 13);
        assert_eq!(fit_slots(8, 0.5, 1000, bytes).unwrap(), 8);
        assert_eq!(fit_slots(64, 1.0, 130, bytes).unwrap(), 1);
        // An overflowing size is "does not fit", not an error of the search.
        let huge = |s: usize| {
            if s > 3 {
                Err(Error::Empty { arg: "x" })
            } else {
                Ok(s as u64)
            }
        };
        assert_eq!(fit_slots(1 << 40, 1.0, 1 << 50, huge).unwrap(), 3);
    }

    #[test]
    fn one_slot_too_many_or_a_bad_fraction_is_an_error() {
        let bytes = |s: usize| Ok(100 + 30 * s as u64);
        let e = fit_slots(64, 0.1, 1000, bytes).unwrap_err().to_string();
        assert!(e.contains("one KV-cache slot"), "{e}");
        for f in [0.0, -0.5, 1.5, f64::NAN] {
            let e = fit_slots(64, f, 1000, bytes).unwrap_err().to_string();
            assert!(e.contains("memory_fraction"), "{e}");
        }
    }
}
