//! How a validated batch runs on the GPU: in passes of at most [`CHUNK_TOKENS`] tokens, and,
//! for decode steps of a graphed batch size, by replaying a captured CUDA graph.
//!
//! [`CHUNK_TOKENS`]: super::sizes::CHUNK_TOKENS

use std::ops::Range;

use crate::engine::forward::Plan;

/// Decode batch sizes (entries of one token each) whose step is captured into a graph.
pub(crate) const GRAPH_BATCHES: [usize; 5] = [1, 2, 4, 8, 16];

/// One pass: a range of the plan's tokens, and the entries whose last token falls in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Tokens `tokens[range]` of the plan.
    pub range: Range<usize>,
    /// `(entry, row within the pass)` of each entry whose logits this pass produces.
    pub last: Vec<(usize, u32)>,
}

/// Splits the plan's tokens into passes of at most `chunk` tokens, in order (a slot's tokens
/// are consecutive, so each pass sees the earlier ones of its slot in the cache).
pub(crate) fn passes(plan: &Plan, chunk: usize) -> Vec<Pass> {
    let n = plan.tokens.len();
    (0..n.div_ceil(chunk))
        .map(|i| {
            let range = i * chunk..((i + 1) * chunk).min(n);
            let last = plan
                .last
                .iter()
                .enumerate()
                .filter(|(_, &t)| range.contains(&t))
                .map(|(e, &t)| (e, (t - range.start) as u32))
                .collect();
            Pass { range, last }
        })
        .collect()
}

/// The graph a plan replays, by batch size: every entry one token (a decode step), and the
/// batch one of [`GRAPH_BATCHES`].
pub(crate) fn graph_batch(plan: &Plan) -> Option<usize> {
    let b = plan.last.len();
    (plan.tokens.len() == b && GRAPH_BATCHES.contains(&b)).then_some(b)
}
