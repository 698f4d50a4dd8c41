//! Where a forward pass spends its time: wall-clock laps per named phase, summed over calls
//! until reset. Always on: a lap is one `Instant::now()` (~25 ns), about 20 per layer, a few
//! µs per decode step against milliseconds of work.

use std::time::{Duration, Instant};

/// A phase of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Embedding lookups.
    Embed,
    /// The layers' input RMSNorms, the sub-norms and the final norm.
    Norm,
    /// Per-token int8 quantization of a linear layer's input (with its activation norm).
    Quantize,
    /// The q, k and v projections (W2A8 kernels).
    Qkv,
    /// RoPE and the KV-cache append.
    Rope,
    /// Softmax attention over the cache.
    Attention,
    /// The output projection.
    O,
    /// The gate and up projections.
    GateUp,
    /// The gated activation (`act(gate) * up`).
    Act,
    /// The down projection.
    Down,
    /// Residual adds and biases.
    Residual,
    /// The lm_head product.
    LmHead,
}

impl Phase {
    /// Every phase, in the order a layer runs them.
    pub const ALL: [Phase; 12] = [
        Phase::Embed,
        Phase::Norm,
        Phase::Quantize,
        Phase::Qkv,
        Phase::Rope,
        Phase::Attention,
        Phase::O,
        Phase::GateUp,
        Phase::Act,
        Phase::Down,
        Phase::Residual,
        Phase::LmHead,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Embed => "embed",
            Phase::Norm => "rmsnorm",
            Phase::Quantize => "quantize_i8",
            Phase::Qkv => "qkv_proj",
            Phase::Rope => "rope_kv_append",
            Phase::Attention => "attention",
            Phase::O => "o_proj",
            Phase::GateUp => "gate_up_proj",
            Phase::Act => "activation",
            Phase::Down => "down_proj",
            Phase::Residual => "residual_bias",
            Phase::LmHead => "lm_head",
        }
    }
}

/// Time per phase, accumulated lap by lap.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    last: Instant,
    totals: [Duration; Phase::ALL.len()],
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            last: Instant::now(),
            totals: Default::default(),
        }
    }
}

impl Clock {
    /// Starts a lap now (what ran since the last lap is not counted).
    pub fn start(&mut self) {
        self.last = Instant::now();
    }

    /// Charges the time since the last lap to `phase`.
    pub fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.totals[phase as usize] += now - self.last;
        self.last = now;
    }

    /// Each phase's total so far.
    pub fn totals(&self) -> Vec<(Phase, Duration)> {
        Phase::ALL
            .iter()
            .map(|&p| (p, self.totals[p as usize]))
            .collect()
    }

    /// Zeroes the totals.
    pub fn reset(&mut self) {
        self.totals = Default::default();
    }
}
