//! The GPU engine where the crate is built without the `cuda` feature: no value exists, and
//! every way to make one says why.

use super::config::ModelConfig;
use super::forward::Plan;
use super::weights::Weights;
use super::Draw;
use crate::error::{Error, Result};

/// Uninhabited: never constructed.
pub(crate) enum GpuEngine {}

fn unavailable() -> Error {
    Error::Unsupported {
        what: "device",
        detail: "warp-bitnet was built without the `cuda` feature; use the CPU (device \"cpu\")"
            .into(),
    }
}

pub(crate) fn check_available() -> Result<()> {
    Err(unavailable())
}

impl GpuEngine {
    pub fn new(
        _: usize,
        _: &ModelConfig,
        _: &Weights,
        _: (usize, Option<f64>),
        _: usize,
        _: super::LinearWeights,
    ) -> Result<Self> {
        Err(unavailable())
    }

    pub fn slots(&self) -> usize {
        match *self {}
    }

    pub fn forward(&mut self, _: &Plan, _: &mut [f32]) -> Result<()> {
        match *self {}
    }

    pub fn greedy(&mut self, _: &Plan, _: &mut [u32]) -> Result<()> {
        match *self {}
    }

    pub fn sample(&mut self, _: &Plan, _: &[(Draw, usize)], _: &mut [u32]) -> Result<()> {
        match *self {}
    }

    pub fn reset_slot(&mut self, _: usize) {
        match *self {}
    }

    pub fn set_graphs(&mut self, _: bool) {
        match *self {}
    }

    pub fn time_decode_graph(&mut self, _: usize, _: usize) -> Result<f64> {
        match *self {}
    }

    pub fn copy_bandwidth(&self) -> Result<f64> {
        match *self {}
    }

    pub fn bytes_per_decode_step(&self, _: usize) -> u64 {
        match *self {}
    }
}
