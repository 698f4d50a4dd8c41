//! Threads for the fast kernels: rows are split into one contiguous part per thread, and the
//! calling thread with a cached pool of `threads - 1` workers runs them.
//!
//! The pool is ours ([`super::arch::spin_pool`]): persistent workers that spin for a while
//! after each call, so a decode step's back-to-back GEMVs do not wake sleeping threads
//! (rayon's `in_place_scope`, used before, cost 11-23 µs per call at 2 threads here). Its
//! per-call overhead is measured by `bench::cpu::pool_overhead_us` and recorded in
//! docs/NOTES.md ("CPU kernels").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::arch::spin_pool::SpinPool;
use crate::error::{Error, Result};

/// Most threads a call may ask for.
pub const MAX_THREADS: usize = 256;

/// The thread count used when a caller passes 0: `WARP_BITNET_THREADS` if set, else the
/// number of CPUs this process may use. Read once per process.
pub fn default_threads() -> Result<usize> {
    static DEFAULT: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| match std::env::var("WARP_BITNET_THREADS") {
            Ok(s) => parse_threads(&s).map_err(|e| e.to_string()),
            Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        })
        .clone()
        .map_err(|detail| Error::Unsupported {
            what: "WARP_BITNET_THREADS",
            detail,
        })
}

fn parse_threads(s: &str) -> Result<usize> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(Error::Unsupported {
            what: "thread count",
            detail: format!("{s:?}; expected an integer from 1 to {MAX_THREADS}"),
        }),
    }
}

/// `threads`, or the default for 0; an error above [`MAX_THREADS`].
pub fn resolve_threads(threads: usize) -> Result<usize> {
    match threads {
        0 => default_threads(),
        n if n <= MAX_THREADS => Ok(n),
        n => Err(Error::TooLarge {
            arg: "threads",
            value: n as u64,
            limit: MAX_THREADS as u64,
        }),
    }
}

/// Runs `f` on every part, on the calling thread and the cached pool of `parts.len() - 1`
/// workers; returns when all are done.
pub(crate) fn run_parts<P: Send>(parts: Vec<P>, f: impl Fn(P) + Sync) -> Result<()> {
    if parts.len() <= 1 {
        parts.into_iter().for_each(f);
        return Ok(());
    }
    let pool = pool_of(parts.len() - 1)?;
    let slots: Vec<Mutex<Option<P>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
    pool.run(slots.len(), &|i| {
        let part = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = part {
            f(p);
        }
    });
    Ok(())
}

/// The cached pool of `workers` threads.
fn pool_of(workers: usize) -> Result<Arc<SpinPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<SpinPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&workers) {
        return Ok(p.clone());
    }
    let pool = SpinPool::new(workers)
        .map_err(|e| Error::Io(std::io::Error::other(format!("starting CPU threads: {e}"))))?;
    Ok(pools.entry(workers).or_insert(Arc::new(pool)).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_part_runs_once() {
        for n in 1..5 {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            run_parts((0..n).collect(), |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn a_panicking_part_is_raised_after_all_parts_ran() {
        let hits = AtomicUsize::new(0);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_parts((0..3).collect(), |i: usize| {
                hits.fetch_add(1, Ordering::Relaxed);
                assert!(i != 1, "part 1 fails");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(hits.load(Ordering::Relaxed), 3);
        // The pool still works afterwards.
        run_parts((0..3).collect(), |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(hits.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn thread_counts() {
        assert_eq!(parse_threads(" 3 ").unwrap(), 3);
        assert!(parse_threads("0").is_err());
        assert!(parse_threads("lots").is_err());
        assert!(resolve_threads(MAX_THREADS + 1).is_err());
        assert!(resolve_threads(0).unwrap() >= 1);
    }
}
