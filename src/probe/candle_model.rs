//! Probe models in candle: the shared program (`crate::runtime::candle::program`) on real candle tensors,
//! and one measured training step (forward → loss → backward → AdamW).
//!
//! Parameters carry HF names (`model.layers.0.self_attn.q_proj.weight`, as
//! candle-transformers' llama/qwen2/gpt2 loaders read them). Every op has a candle
//! backward (see `program`); `step_gradients` checks that each trainable parameter
//! receives a non-zero gradient.

use candle_core::{DType as CDType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::probe::meter::{MemoryMeter, Reading};
use crate::runtime::candle::program::{self, Bin, Input, Ops, ParamKind, Params, ProbeMethod, Un};

/// A candle error's message, without the backtrace candle appends when RUST_BACKTRACE
/// is set (it would end up in the measurement file).
pub fn error_text(e: &candle_core::Error) -> String {
    let s = e.to_string();
    match s.find("\n   0: ") {
        Some(i) => s[..i].trim_end().to_string(),
        None => s.trim_end().to_string(),
    }
}

fn ce(e: candle_core::Error) -> Error {
    let msg = error_text(&e);
    if is_device_oom(&msg) {
        Error::DeviceOutOfMemory(msg)
    } else {
        Error::Probe(msg)
    }
}

/// Whether a candle error message says the device ran out of memory: the CUDA driver's
/// `CUDA_ERROR_OUT_OF_MEMORY` (cudarc prints the enum name and "out of memory"), or a
/// cuBLAS / cuRAND allocation failure. The sweep records such a point as `oom`.
pub fn is_device_oom(msg: &str) -> bool {
    msg.contains("CUDA_ERROR_OUT_OF_MEMORY")
        || msg.contains("CUBLAS_STATUS_ALLOC_FAILED")
        || msg.contains("CURAND_STATUS_ALLOCATION_FAILED")
        || msg.contains("out of memory")
}

/// `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<DeviceSpec> {
        let t = s.trim();
        if t == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if let Some(n) = t.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            return Ok(DeviceSpec::Cuda(n));
        }
        if t == "cuda" {
            return Ok(DeviceSpec::Cuda(0));
        }
        Err(Error::invalid("device", s, "cpu, cuda or cuda:N"))
    }
    pub fn name(&self) -> String {
        match self {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(n) => format!("cuda{n}"),
        }
    }
    /// The candle device; CUDA goes through `crate::probe::cuda` (without the `cuda` feature:
    /// "built without CUDA support; see README").
    pub fn open(&self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => crate::probe::cuda::open(*n),
        }
    }
}

/// Element type of a probe.
pub fn candle_dtype(d: crate::units::dtype::DType) -> Result<CDType> {
    match d {
        crate::units::dtype::DType::F32 => Ok(CDType::F32),
        crate::units::dtype::DType::BF16 => Ok(CDType::BF16),
        crate::units::dtype::DType::F16 => Ok(CDType::F16),
        other => Err(Error::invalid("probe dtype", other, "f32, bf16, f16")),
    }
}

/// candle back end of the program.
pub struct CandleOps {
    pub device: Device,
    pub dtype: CDType,
    pub vocab: usize,
    pub seq: usize,
    pub vars: Vec<(String, Var)>,
    pub frozen_bytes: u64,
    rng: u64,
}

impl CandleOps {
    pub fn new(device: Device, dtype: CDType, vocab: usize, seq: usize, seed: u64) -> Self {
        CandleOps {
            device,
            dtype,
            vocab,
            seq,
            vars: Vec::new(),
            frozen_bytes: 0,
            rng: seed | 1,
        }
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn randn(&mut self, dims: &[usize], std: f64) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let mut v: Vec<f32> = Vec::with_capacity(n);
        for _ in 0..n {
            // sum of uniforms ≈ normal; deterministic and cheap
            let mut s = 0.0;
            for _ in 0..4 {
                s += (self.next() >> 11) as f64 / (1u64 << 53) as f64;
            }
            v.push(((s - 2.0) * std * 1.732) as f32);
        }
        Tensor::from_vec(v, dims, &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(ce)
    }
}

impl Ops for CandleOps {
    type T = Tensor;
    fn dims(&self, t: &Tensor) -> Vec<usize> {
        t.dims().to_vec()
    }
    fn input(&mut self, what: Input, dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let d = &self.device.clone();
        let t = match what {
            Input::TokenIds | Input::Targets => {
                let v: Vec<u32> = (0..n)
                    .map(|_| (self.next() % self.vocab as u64) as u32)
                    .collect();
                Tensor::from_vec(v, dims, d)
            }
            Input::PositionIds => {
                let s = self.seq;
                let v: Vec<u32> = (0..n).map(|i| (i % s) as u32).collect();
                Tensor::from_vec(v, dims, d)
            }
            Input::Cos | Input::Sin => {
                let (s, half) = (dims[0], dims[1]);
                let mut v = Vec::with_capacity(n);
                for p in 0..s {
                    for i in 0..half {
                        let f = 1.0 / 10000f64.powf(i as f64 / half as f64);
                        let a = p as f64 * f;
                        v.push(if what == Input::Cos { a.cos() } else { a.sin() } as f32);
                    }
                }
                Tensor::from_vec(v, dims, d).and_then(|t| t.to_dtype(self.dtype))
            }
            Input::CausalMask => {
                let s = dims[0];
                let v: Vec<f32> = (0..s * s)
                    .map(|k| if k % s > k / s { -1e9 } else { 0.0 })
                    .collect();
                Tensor::from_vec(v, dims, d).and_then(|t| t.to_dtype(self.dtype))
            }
        };
        t.map_err(ce)
    }
    fn param(
        &mut self,
        name: &str,
        dims: &[usize],
        kind: ParamKind,
        trainable: bool,
    ) -> Result<Tensor> {
        let t = match kind {
            ParamKind::Weight | ParamKind::LoraA => self.randn(dims, 0.02)?,
            ParamKind::LoraB => self.randn(dims, 0.002)?,
            ParamKind::NormWeight => Tensor::ones(dims, self.dtype, &self.device).map_err(ce)?,
            ParamKind::Bias => self.randn(dims, 0.001)?,
        };
        if trainable {
            let v = Var::from_tensor(&t).map_err(ce)?;
            let t = v.as_tensor().clone();
            self.vars.push((name.to_string(), v));
            Ok(t)
        } else {
            self.frozen_bytes += (t.elem_count() * t.dtype().size_in_bytes()) as u64;
            Ok(t)
        }
    }
    fn matmul(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.matmul(b).map_err(ce)
    }
    fn binary(&mut self, a: &Tensor, b: &Tensor, op: Bin) -> Result<Tensor> {
        match op {
            Bin::Add => a.add(b),
            Bin::Sub => a.sub(b),
            Bin::Mul => a.mul(b),
            Bin::Div => a.div(b),
        }
        .map_err(ce)
    }
    fn broadcast_as(&mut self, a: &Tensor, dims: &[usize]) -> Result<Tensor> {
        a.broadcast_as(dims).map_err(ce)
    }
    fn affine(&mut self, a: &Tensor, mul: f64, add: f64) -> Result<Tensor> {
        a.affine(mul, add).map_err(ce)
    }
    fn unary(&mut self, a: &Tensor, op: Un) -> Result<Tensor> {
        match op {
            Un::Exp => a.exp(),
            Un::Log => a.log(),
            Un::Sqr => a.sqr(),
            Un::Sqrt => a.sqrt(),
            Un::Neg => a.neg(),
            Un::Silu => a.silu(),
            Un::Gelu => a.gelu(),
        }
        .map_err(ce)
    }
    fn sum_keepdim(&mut self, a: &Tensor, dim: usize) -> Result<Tensor> {
        a.sum_keepdim(dim).map_err(ce)
    }
    fn max_keepdim(&mut self, a: &Tensor, dim: usize) -> Result<Tensor> {
        a.max_keepdim(dim).map_err(ce)
    }
    fn reshape(&mut self, a: &Tensor, dims: &[usize]) -> Result<Tensor> {
        a.reshape(dims).map_err(ce)
    }
    fn transpose(&mut self, a: &Tensor, d1: usize, d2: usize) -> Result<Tensor> {
        a.transpose(d1, d2).map_err(ce)
    }
    fn narrow(&mut self, a: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        a.narrow(dim, start, len).map_err(ce)
    }
    fn contiguous(&mut self, a: &Tensor) -> Result<Tensor> {
        a.contiguous().map_err(ce)
    }
    fn cat(&mut self, ts: &[&Tensor], dim: usize) -> Result<Tensor> {
        Tensor::cat(ts, dim).map_err(ce)
    }
    fn index_select(&mut self, w: &Tensor, ids: &Tensor) -> Result<Tensor> {
        w.index_select(ids, 0).map_err(ce)
    }
    fn gather(&mut self, x: &Tensor, ids: &Tensor, dim: usize) -> Result<Tensor> {
        x.gather(ids, dim).map_err(ce)
    }
}

/// One probe point.
#[derive(Debug, Clone, PartialEq)]
pub struct StepConfig {
    pub batch: usize,
    pub seq: usize,
    pub method: ProbeMethod,
    pub dtype: crate::units::dtype::DType,
    pub warmup_steps: usize,
    pub measured_steps: usize,
    pub lr: f64,
}

/// What one probe point measured (bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepMeasurement {
    /// Weights (trainable and frozen) + optimizer state, counted from the tensors.
    pub static_bytes: u64,
    /// Peak above the pre-step baseline, per phase and for the whole step.
    pub forward: u64,
    pub loss: u64,
    pub backward: u64,
    pub optimizer: u64,
    pub step: u64,
    pub source: Option<crate::probe::meter::PeakSource>,
    /// The meter's side numbers (CUDA: pool reserved, NVML), absolute bytes.
    pub side: crate::probe::meter::SideReadings,
}

/// A built probe model with its optimizer and inputs.
pub struct ProbeModel {
    pub ops: CandleOps,
    pub params: Params<Tensor>,
    pub inputs: program::Inputs<Tensor>,
    pub opt: AdamW,
    pub spec: ModelSpec,
    pub cfg: StepConfig,
}

impl ProbeModel {
    pub fn build(spec: &ModelSpec, cfg: &StepConfig, device: &Device) -> Result<ProbeModel> {
        let dt = candle_dtype(cfg.dtype)?;
        let mut ops = CandleOps::new(device.clone(), dt, spec.vocab as usize, cfg.seq, 0x5eed);
        let params = program::build_params(&mut ops, spec, cfg.method)?;
        let inputs = program::build_inputs(&mut ops, spec, cfg.batch, cfg.seq)?;
        let vars: Vec<Var> = ops.vars.iter().map(|(_, v)| v.clone()).collect();
        let opt = AdamW::new(
            vars,
            ParamsAdamW {
                lr: cfg.lr,
                ..ParamsAdamW::default()
            },
        )
        .map_err(ce)?;
        Ok(ProbeModel {
            ops,
            params,
            inputs,
            opt,
            spec: spec.clone(),
            cfg: cfg.clone(),
        })
    }

    /// Weights + AdamW moments, from the tensors themselves.
    pub fn static_bytes(&self) -> u64 {
        let var_bytes: u64 = self
            .ops
            .vars
            .iter()
            .map(|(_, v)| (v.elem_count() * v.dtype().size_in_bytes()) as u64)
            .sum();
        self.ops.frozen_bytes + 3 * var_bytes
    }

    /// One step; with a meter, each phase is bracketed and read.
    pub fn step(&mut self, meter: Option<&mut dyn MemoryMeter>) -> Result<Option<[Reading; 4]>> {
        let (b, s) = (self.cfg.batch, self.cfg.seq);
        let mut readings = Vec::with_capacity(4);
        let mut m = meter;
        let start = |m: &mut Option<&mut dyn MemoryMeter>| -> Result<()> {
            if let Some(m) = m.as_deref_mut() {
                m.start()?;
            }
            Ok(())
        };
        let stop = |m: &mut Option<&mut dyn MemoryMeter>, r: &mut Vec<Reading>| -> Result<()> {
            if let Some(m) = m.as_deref_mut() {
                r.push(m.stop()?);
            }
            Ok(())
        };
        start(&mut m)?;
        let logits = program::forward(&mut self.ops, &self.spec, &self.params, &self.inputs, b, s)?;
        stop(&mut m, &mut readings)?;
        start(&mut m)?;
        let loss = program::loss(&mut self.ops, &logits, &self.inputs.targets)?;
        stop(&mut m, &mut readings)?;
        start(&mut m)?;
        let grads = loss.backward().map_err(ce)?;
        stop(&mut m, &mut readings)?;
        drop(loss);
        drop(logits);
        start(&mut m)?;
        self.opt.step(&grads).map_err(ce)?;
        stop(&mut m, &mut readings)?;
        drop(grads);
        Ok(if readings.len() == 4 {
            Some([readings[0], readings[1], readings[2], readings[3]])
        } else {
            None
        })
    }

    /// Names of trainable parameters whose gradient is missing or all zero after one
    /// forward + backward.
    pub fn params_without_gradient(&mut self) -> Result<Vec<String>> {
        let (b, s) = (self.cfg.batch, self.cfg.seq);
        let logits = program::forward(&mut self.ops, &self.spec, &self.params, &self.inputs, b, s)?;
        let loss = program::loss(&mut self.ops, &logits, &self.inputs.targets)?;
        let grads = loss.backward().map_err(ce)?;
        let mut missing = Vec::new();
        for (name, v) in &self.ops.vars {
            let ok = match grads.get(v.as_tensor()) {
                Some(g) => {
                    let s = g
                        .abs()
                        .and_then(|a| a.to_dtype(CDType::F32))
                        .and_then(|a| a.sum_all())
                        .and_then(|a| a.to_scalar::<f32>())
                        .map_err(ce)?;
                    s > 0.0 && s.is_finite()
                }
                None => false,
            };
            if !ok {
                missing.push(name.clone());
            }
        }
        Ok(missing)
    }
}

/// Build, warm up and measure one point. Peaks are the maximum over measured steps.
pub fn measure(
    spec: &ModelSpec,
    cfg: &StepConfig,
    device: &Device,
    meter: &mut dyn MemoryMeter,
) -> Result<StepMeasurement> {
    let mut m = ProbeModel::build(spec, cfg, device)?;
    for _ in 0..cfg.warmup_steps {
        m.step(None)?;
    }
    let mut out = StepMeasurement {
        static_bytes: m.static_bytes(),
        ..StepMeasurement::default()
    };
    for _ in 0..cfg.measured_steps.max(1) {
        let base = meter.baseline()?;
        let r = m
            .step(Some(meter))?
            .expect("metered step has four readings");
        let d = |x: &Reading| x.peak.saturating_sub(base);
        out.forward = out.forward.max(d(&r[0]));
        out.loss = out.loss.max(d(&r[1]));
        out.backward = out.backward.max(d(&r[2]));
        out.optimizer = out.optimizer.max(d(&r[3]));
        out.source = Some(r[0].source);
    }
    out.side = meter.side();
    out.step = out
        .forward
        .max(out.loss)
        .max(out.backward)
        .max(out.optimizer);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_out_of_memory_is_recognised() {
        // what candle + cudarc print for a failed cuMemAllocAsync / cuBLAS allocation
        let cuda = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        assert!(is_device_oom(cuda));
        assert!(is_device_oom("CublasError(CUBLAS_STATUS_ALLOC_FAILED)"));
        assert!(!is_device_oom("shape mismatch in matmul"));
        assert!(!is_device_oom(
            "DriverError(CUDA_ERROR_STUB_LIBRARY, \"CUDA driver stub\")"
        ));
        let e = ce(candle_core::Error::Msg(cuda.into()));
        assert!(matches!(e, Error::DeviceOutOfMemory(_)), "{e}");
        assert!(matches!(
            ce(candle_core::Error::Msg("x".into())),
            Error::Probe(_)
        ));
    }

    #[test]
    fn cuda_devices_go_through_the_cuda_module() {
        let opened = DeviceSpec::Cuda(0).open();
        if crate::probe::cuda::CUDA_ENABLED {
            // a CUDA build: exactly what `cuda::open` gives — the GPU where there is
            // one, else its error (no driver, the link stub, no device 0)
            match (opened, crate::probe::cuda::open(0)) {
                (Ok(d), Ok(direct)) => {
                    let gpu0 = candle_core::DeviceLocation::Cuda { gpu_id: 0 };
                    assert!(d.is_cuda(), "{d:?}");
                    assert_eq!((d.location(), direct.location()), (gpu0, gpu0));
                }
                (Err(e), Err(direct)) => {
                    assert!(matches!(e, Error::Cuda(_)), "{e}");
                    assert_eq!(e.to_string(), direct.to_string());
                    assert!(e.to_string().contains("cuda:0"), "{e}");
                }
                (a, b) => panic!("DeviceSpec::open {a:?}, cuda::open {b:?}"),
            }
        } else {
            let e = opened.map(|_| ()).unwrap_err();
            assert!(matches!(e, Error::NoCuda), "{e}");
        }
        assert!(matches!(DeviceSpec::Cpu.open(), Ok(Device::Cpu)));
    }
}
