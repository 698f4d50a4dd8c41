//! A persistent pool of worker threads that spin for a while after each call before they
//! sleep, so that back-to-back kernel calls (a decode step's GEMVs) hand work over in well
//! under a microsecond instead of waking a sleeping thread (rayon's scope measured 11-23 µs
//! per call at 2 threads here). It lives under `cpu/arch` because handing a borrowed closure
//! to long-lived threads needs `unsafe` (a lifetime the compiler cannot see).
//!
//! One call is a [`Job`]: `n` parts claimed by an atomic counter, by the caller and the
//! workers alike. The job is reference-counted, so a worker that wakes late only ever
//! touches the counter of a finished job; the caller's closure is called only for a claimed
//! part, and the caller returns only after every claimed part has finished.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps between a decode
/// step's GEMVs (norms, quantization, attention at short contexts: a few to tens of µs), short
/// enough not to hold a core that a caller's other threads (the engine's rayon pool) need.
const SPIN: Duration = Duration::from_micros(50);

/// The caller's closure with its lifetime erased; see [`Job::run_part`] for why calling it
/// is sound.
type Erased = *const (dyn Fn(usize) + Sync + 'static);

struct Job {
    f: Erased,
    parts: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `f` points to a `Sync` closure, only called (shared) while the caller waits in
// `SpinPool::run`; everything else is atomics.
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs parts until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.parts {
                return;
            }
            // SAFETY: part `i` was claimed, so it is below `parts` and not yet counted in
            // `done`; `SpinPool::run` does not return (and the closure stays alive) until
            // `done == parts`.
            let f = unsafe { &*self.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    /// Bumped once per job; workers spin on it.
    epoch: AtomicU64,
    /// The current job and the number of workers asleep on `wake`.
    slot: Mutex<(Option<Arc<Job>>, usize)>,
    wake: Condvar,
}

/// A pool of `workers` threads (the caller is one more).
pub struct SpinPool {
    shared: Arc<Shared>,
}

impl SpinPool {
    /// Starts `workers` threads, named `warp-bitnet-cpu-i`.
    pub fn new(workers: usize) -> std::io::Result<SpinPool> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            slot: Mutex::new((None, 0)),
            wake: Condvar::new(),
        });
        for i in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("warp-bitnet-cpu-{i}"))
                .spawn(move || worker(&s))?;
        }
        Ok(SpinPool { shared })
    }

    /// Calls `f(i)` for every `i < parts`, on the caller and the workers; returns when all
    /// are done. A panic in any part is raised again here, after every part has finished.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime changes; the pointer is dereferenced only for claimed
        // parts, and this function waits below until every claimed part has finished.
        let erased: Erased = unsafe { std::mem::transmute(f as *const (dyn Fn(usize) + Sync)) };
        let job = Arc::new(Job {
            f: erased,
            parts,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let sleepers = {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.0 = Some(job.clone());
            self.shared.epoch.fetch_add(1, Ordering::Release);
            slot.1
        };
        if sleepers > 0 {
            self.shared.wake.notify_all();
        }
        job.work();
        let start = Instant::now();
        while job.done.load(Ordering::Acquire) < parts {
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now(); // a worker was descheduled: let it run
            }
        }
        if job.panicked.load(Ordering::Relaxed) {
            resume_unwind(Box::new("a CPU kernel thread panicked"));
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if spins % 64 != 0 || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut slot = s.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.1 += 1;
            while s.epoch.load(Ordering::Acquire) == seen {
                slot = s.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
            slot.1 -= 1;
        }
        let job = {
            let slot = s.slot.lock().unwrap_or_else(|e| e.into_inner());
            seen = s.epoch.load(Ordering::Acquire);
            slot.0.clone()
        };
        if let Some(job) = job {
            job.work();
        }
    }
}
