//! Mutation test of the checkpoint readers: thousands of seeded random byte flips, truncations
//! and length-field changes of valid safetensors and GGUF files. Each must load (the mutation hit
//! plain data) or be an error, never a panic, and never allocate more than a small multiple of
//! the file (a hostile length field must not become a huge allocation).
//!
//! The largest legitimate allocation is an unpacked or widened tensor: 2-bit codes to one byte
//! each (4x), bf16 to f32 (2x); hence the bound `8 * file + 1 MiB`. This file holds one test so
//! that the allocation counter sees no other test's allocations.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use warp_bitnet::engine::{Engine, EngineOptions};

/// The system allocator, recording the largest single request since the last reset.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds GlobalAlloc's
// contract; the only addition is a relaxed atomic max on the requested size.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout obligations are passed on as they came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as in `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip { at: usize, mask: u8 },
    /// Keep only the first `len` bytes.
    Truncate { len: usize },
    /// Overwrite 8 bytes at `at` (a length, count or offset field when `at` hits one) with `value`.
    Field { at: usize, value: u64 },
    /// Replace an ASCII digit of the safetensors JSON header (shapes and data offsets) with `digit`.
    Digit { nth: usize, digit: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, mask)| Mutation::Flip { at: i.index(usize::MAX), mask }),
        1 => any::<prop::sample::Index>().prop_map(|i| Mutation::Truncate { len: i.index(usize::MAX) }),
        2 => (any::<prop::sample::Index>(), prop_oneof![any::<u64>(), 0u64..4096, Just(u64::MAX)])
            .prop_map(|(i, value)| Mutation::Field { at: i.index(usize::MAX), value }),
        2 => (any::<prop::sample::Index>(), b'0'..=b'9').prop_map(|(i, digit)| Mutation::Digit { nth: i.index(usize::MAX), digit }),
    ]
}

/// Applies `m`; positions are taken modulo the length (half of them inside the first 512 bytes,
/// where the headers are).
fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let pos = |at: usize| {
        if at % 2 == 0 {
            (at / 2) % b.len().min(512)
        } else {
            (at / 2) % b.len()
        }
    };
    match *m {
        Mutation::Flip { at, mask } => {
            let p = pos(at);
            b[p] ^= mask;
        }
        Mutation::Truncate { len } => b.truncate(len % bytes.len()),
        Mutation::Field { at, value } => {
            let p = pos(at).min(b.len() - 8);
            b[p..p + 8].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::Digit { nth, digit } => {
            let header = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let digits: Vec<usize> = (8..header.min(b.len()))
                .filter(|&i| b[i].is_ascii_digit())
                .collect();
            if !digits.is_empty() {
                b[digits[nth % digits.len()]] = digit;
            }
        }
    }
    b
}

fn bounded(len: usize, what: &str, m: &Mutation) -> Result<(), TestCaseError> {
    let largest = LARGEST.load(Ordering::Relaxed);
    prop_assert!(
        largest <= 8 * len + (1 << 20),
        "{what} {m:?}: allocated {largest} bytes for a file of {len}"
    );
    Ok(())
}

#[test]
fn mutated_checkpoints_are_errors_or_loads_never_panics() {
    let dir = common::temp_dir("mutation");
    common::write_checkpoint(&dir, 2, 5);
    let valid = std::fs::read(dir.join("model.safetensors")).unwrap();
    let opts = EngineOptions {
        max_context: 8,
        ..Default::default()
    };
    Engine::load(&dir, &opts).expect("the unmutated checkpoint loads");
    let gguf = common::small_gguf(9);
    let gguf_model = common::gguf_model(2, 5);
    let gguf_path = dir.join("model.gguf");
    std::fs::write(&gguf_path, &gguf_model).unwrap();
    Engine::load(&gguf_path, &opts).expect("the unmutated GGUF model loads");
    warp_bitnet::import::gguf_file(&gguf, |_| ()).expect("the unmutated GGUF file reads");

    let config = Config {
        cases: 2500,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let (loads, errors) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner
        .run(&(mutation(), mutation()), |(ms, mg)| {
            // Safetensors, through the engine's loader.
            let bytes = apply(&valid, &ms);
            std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
            LARGEST.store(0, Ordering::Relaxed);
            let loaded = Engine::load(&dir, &opts);
            bounded(bytes.len(), "safetensors", &ms)?;
            match loaded {
                Ok(mut e) => {
                    // A load is a working model: it runs.
                    let mut logits = vec![0f32; common::VOCAB];
                    let _ = e.forward(&[(0, &[3, 4])], &mut logits);
                    loads.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    prop_assert!(!err.to_string().is_empty());
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A GGUF model, through the engine's loader (metadata, tokenizer, tensors).
            let bytes = apply(&gguf_model, &mg);
            std::fs::write(&gguf_path, &bytes).unwrap();
            LARGEST.store(0, Ordering::Relaxed);
            let loaded = Engine::load(&gguf_path, &opts);
            bounded(bytes.len(), "GGUF model", &mg)?;
            if let Ok(mut e) = loaded {
                let mut logits = vec![0f32; common::VOCAB];
                let _ = e.forward(&[(0, &[3, 4])], &mut logits);
            }
            // GGUF, through the file reader and our packed-file reader.
            let bytes = apply(&gguf, &mg);
            LARGEST.store(0, Ordering::Relaxed);
            let _ = warp_bitnet::import::gguf_file(&bytes, |_| ());
            bounded(bytes.len(), "GGUF", &mg)?;
            LARGEST.store(0, Ordering::Relaxed);
            let _ = warp_bitnet::io::PackedFile::from_bytes(&apply(&valid, &mg));
            bounded(valid.len(), "packed file", &mg)?;
            Ok(())
        })
        .unwrap();
    // Both outcomes occur: the mutations reach the data and the headers.
    let (loads, errors) = (loads.into_inner(), errors.into_inner());
    assert!(
        loads > 100 && errors > 100,
        "{loads} loads, {errors} errors"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
