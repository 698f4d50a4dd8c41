//! Threads for the fast kernels: rows are split into one contiguous part per thread, the
//! calling thread runs the first part, and a cached pool of `threads - 1` workers the rest.
//!
//! The pool is rayon's (`in_place_scope`, so the caller works instead of waiting); its
//! per-call overhead is measured by `bench::cpu::pool_overhead` and recorded in
//! docs/NOTES.md ("CPU kernels").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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

/// Runs `f` on every part, the first on the calling thread and the others on the cached
/// pool of `parts.len() - 1` workers; returns when all are done.
pub(crate) fn run_parts<P: Send>(parts: Vec<P>, f: impl Fn(P) + Sync) -> Result<()> {
    let mut it = parts.into_iter();
    let Some(first) = it.next() else {
        return Ok(());
    };
    if it.len() == 0 {
        f(first);
        return Ok(());
    }
    let pool = pool_of(it.len())?;
    let f = &f;
    pool.in_place_scope(|s| {
        for p in it {
            s.spawn(move |_| f(p));
        }
        f(first);
    });
    Ok(())
}

/// The cached pool of `workers` threads.
fn pool_of(workers: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&workers) {
        return Ok(p.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("warp-bitnet-cpu-{i}"))
        .build()
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
    fn thread_counts() {
        assert_eq!(parse_threads(" 3 ").unwrap(), 3);
        assert!(parse_threads("0").is_err());
        assert!(parse_threads("lots").is_err());
        assert!(resolve_threads(MAX_THREADS + 1).is_err());
        assert!(resolve_threads(0).unwrap() >= 1);
    }
}
