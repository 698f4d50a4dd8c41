//! GPU-side timing for the whole-model bench: one captured decode step replayed between CUDA
//! events (host launch time excluded), and the device's copy bandwidth in the same run.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

use super::GpuEngine;
use crate::error::{Error, Result};

impl GpuEngine {
    fn events(&self, n: usize) -> Result<Vec<(CudaEvent, CudaEvent)>> {
        let flag = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let ctx = self.gpu.context();
        (0..n)
            .map(|_| Ok((ctx.new_event(flag)?, ctx.new_event(flag)?)))
            .collect()
    }

    /// Median microseconds of one replay of the graph of decode batch `batch` (captured by an
    /// earlier decode step of that size), `iters` replays after 10 warm-up ones. Each replay
    /// repeats the last step (same tokens and positions: it rewrites the same cache rows).
    pub fn time_decode_graph(&mut self, batch: usize, iters: usize) -> Result<f64> {
        let graph = self
            .graphs
            .get(&(batch, super::Tail::None))
            .ok_or_else(|| Error::Unsupported {
                what: "batch",
                detail: format!("no decode graph of {batch} sequences was captured yet"),
            })?;
        for _ in 0..10 {
            graph.launch()?;
        }
        let events = self.events(iters.max(1))?;
        for (start, end) in &events {
            start.record(&self.stream)?;
            graph.launch()?;
            end.record(&self.stream)?;
        }
        self.stream.synchronize()?;
        median_us(&events)
    }

    /// Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB copy,
    /// median of 10.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 30;
        let src = self.stream.alloc_zeros::<u8>(n)?;
        let mut dst = self.stream.alloc_zeros::<u8>(n)?;
        let events = self.events(10)?;
        for (start, end) in &events {
            start.record(&self.stream)?;
            self.stream.memcpy_dtod(&src, &mut dst)?;
            end.record(&self.stream)?;
        }
        self.stream.synchronize()?;
        Ok(2.0 * n as f64 / (median_us(&events)? * 1e-6))
    }
}

fn median_us(events: &[(CudaEvent, CudaEvent)]) -> Result<f64> {
    let mut t = events
        .iter()
        .map(|(s, e)| Ok(f64::from(s.elapsed_ms(e)?) * 1e3))
        .collect::<Result<Vec<f64>>>()?;
    Ok(crate::bench::median(&mut t))
}
