//! `warp_bitnet._native.Engine`: the core inference engine for Python (parity tests, notebooks).
//! Python's `warp_bitnet.Engine` wraps it; this class only converts and calls.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use warp_bitnet::engine::{self, Device, EngineOptions, ModelConfig, Sampler, SamplingParams};

use crate::to_py;

/// A loaded model on the CPU, one sequence at a time (slot 0).
#[pyclass(name = "Engine", module = "warp_bitnet._native")]
pub struct PyEngine {
    inner: Mutex<engine::Engine>,
}

impl PyEngine {
    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut engine::Engine) -> warp_bitnet::Result<T> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        py.detach(|| {
            let mut e = self
                .inner
                .lock()
                .map_err(|_| PyRuntimeError::new_err("engine poisoned by a panic"))?;
            f(&mut e).map_err(to_py)
        })
    }
}

fn options(
    device: &str,
    max_context: Option<usize>,
    threads: Option<usize>,
    model_max: usize,
) -> PyResult<EngineOptions> {
    Ok(EngineOptions {
        device: Device::parse(device).map_err(to_py)?,
        max_context: max_context.unwrap_or(model_max.min(4096)),
        slots: 1,
        threads,
        ..Default::default()
    })
}

#[pymethods]
impl PyEngine {
    /// Loads a Hugging Face folder or one of our packed files.
    #[staticmethod]
    #[pyo3(signature = (path, device="cpu", max_context=None, threads=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        max_context: Option<usize>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let e = py.detach(|| {
            let model_max = engine::model_config(&path)
                .map_err(to_py)?
                .max_position_embeddings;
            let opts = options(device, max_context, threads, model_max)?;
            engine::Engine::load(&path, &opts).map_err(to_py)
        })?;
        Ok(Self {
            inner: Mutex::new(e),
        })
    }

    /// A preset architecture ("bitnet-2b4t", "llama3-8b-ternary") with random weights.
    #[staticmethod]
    #[pyo3(signature = (preset, seed=0, device="cpu", max_context=None, threads=None))]
    fn random(
        py: Python<'_>,
        preset: &str,
        seed: u64,
        device: &str,
        max_context: Option<usize>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let config = ModelConfig::preset(preset).map_err(to_py)?;
        let opts = options(device, max_context, threads, config.max_position_embeddings)?;
        let e = py
            .detach(|| engine::Engine::random(config, seed, &opts))
            .map_err(to_py)?;
        Ok(Self {
            inner: Mutex::new(e),
        })
    }

    /// Tokens in the vocabulary.
    #[getter]
    fn vocab_size(&self) -> PyResult<usize> {
        Python::attach(|py| self.with(py, |e| Ok(e.config().vocab_size)))
    }

    /// Tokens the context holds.
    #[getter]
    fn max_context(&self) -> PyResult<usize> {
        Python::attach(|py| self.with(py, |e| Ok(e.max_context())))
    }

    /// Last-position logits of `ids` run from an empty context.
    fn logits(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<Vec<f32>> {
        self.with(py, |e| {
            let mut out = vec![0f32; e.config().vocab_size];
            e.reset_slot(0);
            e.forward(&[(0, &ids)], &mut out)?;
            e.reset_slot(0);
            Ok(out)
        })
    }

    /// Generated token ids after `ids`.
    #[pyo3(signature = (ids, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=None, stop_on_eos=true))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        repetition_penalty: f32,
        seed: Option<u64>,
        stop_on_eos: bool,
    ) -> PyResult<Vec<u32>> {
        let params = SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
        };
        let mut sampler = Sampler::new(&params).map_err(to_py)?;
        self.with(py, |e| {
            let mut out = Vec::new();
            engine::generate(e, &ids, max_new_tokens, &mut sampler, stop_on_eos, |t| {
                out.push(t);
                true
            })?;
            Ok(out)
        })
    }

    /// Token ids of `text` (needs a tokenizer).
    #[pyo3(signature = (text, add_special_tokens=true))]
    fn encode(&self, py: Python<'_>, text: String, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        self.with(py, |e| tokenizer(e)?.encode(&text, add_special_tokens))
    }

    /// Text of `ids` (needs a tokenizer).
    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.with(py, |e| tokenizer(e)?.decode(&ids, skip_special_tokens))
    }
}

fn tokenizer(e: &engine::Engine) -> warp_bitnet::Result<&engine::Tokenizer> {
    e.tokenizer()
        .ok_or_else(|| warp_bitnet::Error::Unsupported {
            what: "text",
            detail: "this model has no tokenizer (tokenizer.json); pass token ids".into(),
        })
}
