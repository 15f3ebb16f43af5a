//! CUDA: candle's CUDA device for probe models, device listing, and [`CudaMeter`].
//!
//! This file and its stand-in `cuda_stub.rs` (same public items, every entry returns
//! [`Error::NoCuda`]) are the only Rust sources that depend on the `cuda` feature;
//! `lib.rs` picks one of them as `crate::probe::cuda`. Nothing else may name the feature.
//!
//! # How the meter measures
//! candle allocates every buffer with `cuMemAllocAsync` from the device's *current*
//! memory pool (the default pool unless someone calls `cuDeviceSetMemPool`; see
//! `cudarc::driver::CudaStream::alloc`) and frees it with `cuMemFreeAsync`. So:
//! - **peak** (the meter's [`Reading`]): the pool's `CU_MEMPOOL_ATTR_USED_MEM_HIGH`,
//!   reset (by setting 0) at each phase's start, read after a stream synchronisation:
//!   the exact high-water mark of the bytes handed to tensors ([`PeakSource::PoolHighWater`]);
//! - **reserved peak**: `CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH`, what the pool held from the
//!   driver at most (allocator rounding and fragmentation on top of the above);
//! - **NVML**: device used memory and, when NVML lists our pid, the process's used
//!   memory, sampled on a thread every [`SAMPLE_EVERY`] during each phase, plus a
//!   baseline when the meter is made, before the point's model loads (CUDA context,
//!   loaded modules, cuBLAS workspace). NVML misses short peaks (the pool returns memory
//!   to the driver only at synchronisation), so these are side numbers with their own
//!   source names ([`SideReadings::sources`]), never the peak.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;
use cudarc::driver::{result as cu, sys};

use crate::error::{Error, Result};
use crate::probe::meter::{MemoryMeter, PeakSource, Reading, SideReadings};

/// Whether this build has CUDA support.
pub const CUDA_ENABLED: bool = true;

/// `llm-mem --version`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (cuda: yes)");

/// How often the NVML thread samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// One CUDA device, as `probe devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: u64,
    /// `major.minor`.
    pub compute_capability: String,
    /// NVML's driver version (`580.95.05`), else the CUDA driver API version (`13.0`).
    pub driver: String,
}

fn de(what: &str, e: cu::DriverError) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// A candle error's message without the backtrace candle attaches when RUST_BACKTRACE
/// is set.
fn ce(e: candle_core::Error) -> Error {
    Error::Cuda(crate::probe::candle_model::error_text(&e))
}

/// candle's CUDA device `ordinal` (CUDA context, per-thread stream, cuBLAS handle).
pub fn open(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Cuda(format!(
            "opening cuda:{ordinal}: {}",
            crate::probe::candle_model::error_text(&e)
        ))
    })
}

fn cuda_driver_version() -> Result<String> {
    let mut v: std::ffi::c_int = 0;
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| de("cuDriverGetVersion", e))?;
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

fn nvml_driver_version() -> Option<String> {
    nvml_wrapper::Nvml::init()
        .ok()
        .and_then(|n| n.sys_driver_version().ok())
}

/// Every CUDA device the driver sees.
pub fn devices() -> Result<Vec<CudaInfo>> {
    cu::init().map_err(|e| de("cuInit", e))?;
    let n = cu::device::get_count().map_err(|e| de("cuDeviceGetCount", e))?;
    let driver = match nvml_driver_version() {
        Some(v) => v,
        None => cuda_driver_version()?,
    };
    let mut out = Vec::new();
    for i in 0..n.max(0) {
        out.push(info(i as usize, &driver)?);
    }
    Ok(out)
}

fn info(ordinal: usize, driver: &str) -> Result<CudaInfo> {
    let dev = cu::device::get(ordinal as i32).map_err(|e| de("cuDeviceGet", e))?;
    let name = cu::device::get_name(dev).map_err(|e| de("cuDeviceGetName", e))?;
    let total = unsafe { cu::device::total_mem(dev) }.map_err(|e| de("cuDeviceTotalMem", e))?;
    let attr = |a| unsafe { cu::device::get_attribute(dev, a) };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .map_err(|e| de("cuDeviceGetAttribute", e))?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        .map_err(|e| de("cuDeviceGetAttribute", e))?;
    Ok(CudaInfo {
        ordinal,
        name,
        total_bytes: total as u64,
        compute_capability: format!("{major}.{minor}"),
        driver: driver.to_string(),
    })
}

/// The listing entry of an opened candle CUDA device.
pub fn describe(device: &Device) -> Result<CudaInfo> {
    let cdev = device.as_cuda_device().map_err(ce)?;
    let ordinal = cdev.cuda_stream().context().ordinal();
    let driver = match nvml_driver_version() {
        Some(v) => v,
        None => cuda_driver_version()?,
    };
    info(ordinal, &driver)
}

/// The pool candle allocates from: the device's current memory pool.
fn current_pool(device: &Device) -> Result<sys::CUmemoryPool> {
    let cdev = device.as_cuda_device().map_err(ce)?;
    let stream = cdev.cuda_stream();
    let dev = stream.context().cu_device();
    unsafe { cu::device::get_mem_pool(dev) }.map_err(|e| de("cuDeviceGetMemPool", e))
}

fn pool_get(pool: sys::CUmemoryPool, a: sys::CUmemPool_attribute) -> Result<u64> {
    let mut v = 0u64;
    unsafe { cu::mem_pool::get_attribute(pool, a, &mut v as *mut u64 as *mut _) }
        .map_err(|e| de("cuMemPoolGetAttribute", e))?;
    Ok(v)
}

/// Reset a high-water mark to the current value (the only value allowed is 0).
fn pool_reset(pool: sys::CUmemoryPool, a: sys::CUmemPool_attribute) -> Result<()> {
    let mut z = 0u64;
    unsafe { cu::mem_pool::set_attribute(pool, a, &mut z as *mut u64 as *mut _) }
        .map_err(|e| de("cuMemPoolSetAttribute", e))
}

use sys::CUmemPool_attribute::{
    CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH as RESERVED_HIGH, CU_MEMPOOL_ATTR_USED_MEM_CURRENT as USED,
    CU_MEMPOOL_ATTR_USED_MEM_HIGH as USED_HIGH,
};

/// What the NVML thread saw since the last reset (bytes).
#[derive(Debug, Default, Clone, Copy)]
struct Sampled {
    device_used: Option<u64>,
    process_used: Option<u64>,
    /// `nvml-process` (our pid), `nvml-single-process` (the only process listed: pids
    /// differ inside some containers), or none.
    process_source: Option<&'static str>,
}

impl Sampled {
    fn fold(&mut self, o: Sampled) {
        self.device_used = self.device_used.max(o.device_used);
        if o.process_used.is_some() {
            self.process_used = self.process_used.max(o.process_used);
            self.process_source = o.process_source;
        }
    }
}

/// One NVML reading of device `index`.
fn nvml_read(nvml: &nvml_wrapper::Nvml, index: u32) -> Sampled {
    let Ok(d) = nvml.device_by_index(index) else {
        return Sampled::default();
    };
    let device_used = d.memory_info().ok().map(|m| m.used);
    let (mut process_used, mut process_source) = (None, None);
    if let Ok(ps) = d.running_compute_processes() {
        let pid = std::process::id();
        let used = |p: &nvml_wrapper::struct_wrappers::device::ProcessInfo| match p.used_gpu_memory
        {
            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
            nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
        };
        if let Some(p) = ps.iter().find(|p| p.pid == pid) {
            process_used = used(p);
            process_source = process_used.map(|_| "nvml-process");
        } else if ps.len() == 1 {
            process_used = used(&ps[0]);
            process_source = process_used.map(|_| "nvml-single-process");
        }
    }
    Sampled {
        device_used,
        process_used,
        process_source,
    }
}

/// NVML sampled on a thread; `take` returns the max since the previous `take`.
struct Sampler {
    state: Arc<Mutex<Sampled>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(nvml: Arc<nvml_wrapper::Nvml>, index: u32) -> Sampler {
        let state = Arc::new(Mutex::new(Sampled::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("llm-mem-nvml".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    let r = nvml_read(&nvml, index);
                    s.lock().unwrap_or_else(|e| e.into_inner()).fold(r);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
            .ok();
        Sampler {
            state,
            stop,
            handle,
        }
    }
    fn take(&self) -> Sampled {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The CUDA meter: pool high-water marks for the peaks, NVML on the side.
pub struct CudaMeter {
    device: Option<Device>,
    pool: Option<sys::CUmemoryPool>,
    /// Why the meter cannot measure (reported by `baseline`).
    broken: Option<String>,
    /// Artificial limit (bytes above the baseline), as for the CPU meter.
    pub limit: Option<u64>,
    base: u64,
    sampler: Option<Sampler>,
    nvml_note: Option<String>,
    side: SideReadings,
}

impl CudaMeter {
    /// A meter for an opened candle CUDA device. Synchronises, returns the pool's free
    /// memory to the driver (`cuMemPoolTrimTo(0)`) and reads the NVML baseline, so call
    /// it before the point's model is built. Never fails: a meter that cannot measure
    /// says why from [`MemoryMeter::baseline`].
    pub fn new(device: &Device, limit: Option<u64>) -> CudaMeter {
        let mut m = CudaMeter {
            device: Some(device.clone()),
            pool: None,
            broken: None,
            limit,
            base: 0,
            sampler: None,
            nvml_note: None,
            side: SideReadings::default(),
        };
        if let Err(e) = m.init() {
            m.broken = Some(e.to_string());
        }
        m
    }

    fn init(&mut self) -> Result<()> {
        let device = self.device.clone().expect("set in new");
        let pool = current_pool(&device)?;
        device.synchronize().map_err(ce)?;
        // an error cudarc recorded while freeing the previous point's tensors (it
        // reports it once, at the next call) must not fail this point
        let _ = device
            .as_cuda_device()
            .map_err(ce)?
            .cuda_stream()
            .context()
            .check_err();
        unsafe { sys::cuMemPoolTrimTo(pool, 0) }
            .result()
            .map_err(|e| de("cuMemPoolTrimTo", e))?;
        self.pool = Some(pool);
        let ordinal = device
            .as_cuda_device()
            .map_err(ce)?
            .cuda_stream()
            .context()
            .ordinal();
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => {
                let nvml = Arc::new(nvml);
                // NVML's index is the CUDA ordinal when CUDA_VISIBLE_DEVICES is unset
                // (and CUDA_DEVICE_ORDER=PCI_BUS_ID); one GPU per probe machine.
                let b = nvml_read(&nvml, ordinal as u32);
                self.side.device_used_baseline = b.device_used;
                self.side.process_used_baseline = b.process_used;
                self.side.process_source = b.process_source.map(str::to_string);
                self.sampler = Some(Sampler::start(nvml, ordinal as u32));
            }
            Err(e) => self.nvml_note = Some(format!("nvml-unavailable ({e})")),
        }
        Ok(())
    }

    fn sync(&self) -> Result<sys::CUmemoryPool> {
        if let Some(b) = &self.broken {
            return Err(Error::Meter(b.clone()));
        }
        self.device
            .as_ref()
            .expect("set in new")
            .synchronize()
            .map_err(ce)?;
        Ok(self.pool.expect("set when not broken"))
    }
}

impl MemoryMeter for CudaMeter {
    fn kind(&self) -> &'static str {
        "cuda-pool+nvml"
    }
    fn limit(&self) -> Option<u64> {
        self.limit
    }
    fn baseline(&mut self) -> Result<u64> {
        let pool = self.sync()?;
        self.base = pool_get(pool, USED)?;
        Ok(self.base)
    }
    fn start(&mut self) -> Result<()> {
        let pool = self.sync()?;
        pool_reset(pool, USED_HIGH)?;
        pool_reset(pool, RESERVED_HIGH)?;
        if let Some(s) = &self.sampler {
            s.take();
        }
        Ok(())
    }
    fn stop(&mut self) -> Result<Reading> {
        let pool = self.sync()?;
        let peak = pool_get(pool, USED_HIGH)?;
        let current = pool_get(pool, USED)?;
        let reserved = pool_get(pool, RESERVED_HIGH)?;
        let side = &mut self.side;
        side.allocator_peak = side.allocator_peak.max(Some(peak));
        side.reserved_peak = side.reserved_peak.max(Some(reserved));
        if let Some(s) = &self.sampler {
            let got = s.take();
            side.device_used_peak = side.device_used_peak.max(got.device_used);
            if got.process_used.is_some() {
                side.process_used_peak = side.process_used_peak.max(got.process_used);
                side.process_source = got.process_source.map(str::to_string);
            }
        }
        if let Some(l) = self.limit {
            let used = peak.saturating_sub(self.base);
            if used > l {
                return Err(Error::OutOfMemory {
                    needed: used,
                    limit: l,
                });
            }
        }
        Ok(Reading {
            peak,
            current,
            source: PeakSource::PoolHighWater,
        })
    }
    fn side(&self) -> SideReadings {
        let mut s = self.side.clone();
        let mut src = vec![
            "allocator=cuda-pool-used-high".to_string(),
            "reserved=cuda-pool-reserved-high".to_string(),
        ];
        match &self.nvml_note {
            Some(n) => src.push(format!("device_used={n}")),
            None => {
                src.push("device_used=nvml-sampled".into());
                src.push(format!(
                    "process_used={}",
                    s.process_source.as_deref().unwrap_or("nvml-pid-not-listed")
                ));
            }
        }
        s.sources = src.join(";");
        s
    }
}
