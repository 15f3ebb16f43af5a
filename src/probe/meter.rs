//! Memory meters: how a probe measures the peak of a step.
//!
//! A meter takes a `baseline` (bytes in use before the step), then brackets each phase
//! with `start` / `stop`; `stop` returns the phase's peak and the bytes in use at its
//! end, both absolute, and says how the peak was obtained. The step's dynamic peak is
//! `max(phase peaks) − baseline`.
//!
//! - [`CountingMeter`]: CPU; reads [`CountingAlloc`], a global allocator that counts
//!   live bytes and their high-water mark exactly (install it with
//!   `#[global_allocator]` in the binary or a test harness; the library never does).
//! - [`FakeMeter`]: scripted readings, for deterministic pipeline tests.
//! - `crate::probe::cuda::CudaMeter` (feature `cuda`): the CUDA memory pool's `USED_MEM_HIGH`
//!   (reset per phase) for the peaks ([`PeakSource::PoolHighWater`]), and on the side
//!   ([`SideReadings`]) the pool's `RESERVED_MEM_HIGH` and NVML's device / process used
//!   memory, sampled on a thread, with a baseline before the model loads.
//!
//! An artificial `limit` turns a peak above it into [`Error::OutOfMemory`] (the CPU has
//! no hard limit to hit; this is how tests and small-device plans force an OOM point).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// How a reading's peak was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakSource {
    /// Exact: every allocation counted (counting allocator, CUDA pool high-water mark).
    Exact,
    /// Allocator high-water mark of a memory pool (CUDA).
    PoolHighWater,
    /// Sampled at intervals (NVML): may miss a short-lived peak.
    Sampled,
    /// Scripted (tests).
    Fake,
}

impl PeakSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PeakSource::Exact => "exact",
            PeakSource::PoolHighWater => "pool-high-water",
            PeakSource::Sampled => "sampled",
            PeakSource::Fake => "fake",
        }
    }
}

/// One phase's reading (absolute bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub peak: u64,
    pub current: u64,
    pub source: PeakSource,
}

/// Numbers a meter has next to its phase peaks (absolute bytes, over the measured steps),
/// for the measurement file; `None` where the meter has no such source. `sources` says
/// which source gave each number (`key=source;...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SideReadings {
    /// Allocator high-water mark (CUDA pool `USED_MEM_HIGH`; torch `max_memory_allocated`).
    pub allocator_peak: Option<u64>,
    /// Bytes the allocator held from the driver at most (CUDA pool `RESERVED_MEM_HIGH`;
    /// torch `max_memory_reserved`).
    pub reserved_peak: Option<u64>,
    /// Device-wide used memory before the point's model loaded (NVML).
    pub device_used_baseline: Option<u64>,
    /// Max sampled device-wide used memory during the measured phases (NVML).
    pub device_used_peak: Option<u64>,
    /// This process's used memory before the model loaded (NVML, when it lists us).
    pub process_used_baseline: Option<u64>,
    /// Max sampled process used memory during the measured phases.
    pub process_used_peak: Option<u64>,
    /// How the process figures were matched (`nvml-process`, `nvml-single-process`).
    pub process_source: Option<String>,
    /// `key=source;...` for every number above that is set.
    pub sources: String,
}

pub trait MemoryMeter {
    /// `counting-allocator`, `fake`, `cuda-pool+nvml`...
    fn kind(&self) -> &'static str;
    /// Bytes in use now; the reference the step's dynamic peak is measured from.
    fn baseline(&mut self) -> Result<u64>;
    /// Reset the high-water mark to the bytes in use now.
    fn start(&mut self) -> Result<()>;
    /// Peak since `start` and bytes in use now; `Error::OutOfMemory` past the limit.
    fn stop(&mut self) -> Result<Reading>;
    /// The artificial limit (bytes above the baseline), if any: the sweep does not run
    /// a point predicted far above it (see `sweep::not_run_reason`).
    fn limit(&self) -> Option<u64> {
        None
    }
    /// Side numbers gathered so far (none for CPU meters).
    fn side(&self) -> SideReadings {
        SideReadings::default()
    }
}

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// A global allocator over `System` that counts live bytes and their high-water mark.
pub struct CountingAlloc;

impl CountingAlloc {
    fn add(n: u64) {
        let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(n: u64) {
        LIVE.fetch_sub(n, Ordering::Relaxed);
    }
    /// Bytes live now.
    pub fn live() -> u64 {
        LIVE.load(Ordering::Relaxed)
    }
    /// High-water mark since the last reset.
    pub fn peak() -> u64 {
        PEAK.load(Ordering::Relaxed)
    }
    /// Reset the high-water mark to the bytes live now.
    pub fn reset_peak() {
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    /// Whether this allocator is the process's global allocator (it has seen an
    /// allocation).
    pub fn installed() -> bool {
        let v: Vec<u8> = Vec::with_capacity(64);
        let seen = LIVE.load(Ordering::Relaxed) >= 64;
        drop(v);
        seen
    }
}

// SAFETY: forwards to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            Self::add(layout.size() as u64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            Self::add(layout.size() as u64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        Self::sub(layout.size() as u64);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            // the old and the new block may coexist during the copy
            Self::add(new_size as u64);
            Self::sub(layout.size() as u64);
        }
        p
    }
}

/// CPU meter over [`CountingAlloc`].
#[derive(Debug, Clone, Default)]
pub struct CountingMeter {
    /// Artificial memory limit (absolute bytes above the baseline).
    pub limit: Option<u64>,
    base: u64,
}

impl CountingMeter {
    pub fn new(limit: Option<u64>) -> CountingMeter {
        CountingMeter { limit, base: 0 }
    }
}

impl MemoryMeter for CountingMeter {
    fn kind(&self) -> &'static str {
        "counting-allocator"
    }
    fn limit(&self) -> Option<u64> {
        self.limit
    }
    fn baseline(&mut self) -> Result<u64> {
        if !CountingAlloc::installed() {
            return Err(Error::Meter(
                "the counting allocator is not the global allocator of this process (install llm_mem::probe::meter::CountingAlloc with #[global_allocator])".into(),
            ));
        }
        self.base = CountingAlloc::live();
        Ok(self.base)
    }
    fn start(&mut self) -> Result<()> {
        CountingAlloc::reset_peak();
        Ok(())
    }
    fn stop(&mut self) -> Result<Reading> {
        let r = Reading {
            peak: CountingAlloc::peak(),
            current: CountingAlloc::live(),
            source: PeakSource::Exact,
        };
        if let Some(l) = self.limit {
            let used = r.peak.saturating_sub(self.base);
            if used > l {
                return Err(Error::OutOfMemory {
                    needed: used,
                    limit: l,
                });
            }
        }
        Ok(r)
    }
}

/// Scripted meter: `baseline` returns `base`; each `stop` returns the next peak.
#[derive(Debug, Clone)]
pub struct FakeMeter {
    pub base: u64,
    pub peaks: Vec<u64>,
    pub limit: Option<u64>,
    next: usize,
}

impl FakeMeter {
    pub fn new(base: u64, peaks: Vec<u64>) -> FakeMeter {
        FakeMeter {
            base,
            peaks,
            limit: None,
            next: 0,
        }
    }
}

impl MemoryMeter for FakeMeter {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn limit(&self) -> Option<u64> {
        self.limit
    }
    fn baseline(&mut self) -> Result<u64> {
        Ok(self.base)
    }
    fn start(&mut self) -> Result<()> {
        Ok(())
    }
    fn stop(&mut self) -> Result<Reading> {
        let p = self.peaks.get(self.next).copied().unwrap_or(self.base);
        self.next += 1;
        if let Some(l) = self.limit {
            if p.saturating_sub(self.base) > l {
                return Err(Error::OutOfMemory {
                    needed: p - self.base,
                    limit: l,
                });
            }
        }
        Ok(Reading {
            peak: p,
            current: self.base,
            source: PeakSource::Fake,
        })
    }
}
