//! The estimate under `--runtime candle`: the candle profile (`runtime::candle::tape`)
//! returns a [`CandleStep`] — what is alive at its four moments — and this file turns it
//! into the same [`Estimate`] as the torch path (one `Recorder`, one peak rule).

use super::timeline::{Components, Phase, Recorder};
use super::{event_overheads, recorded, ActivationSummary, Correction, Estimate, ModelSummary};
use crate::arch::ModelSpec;
use crate::error::Result;
use crate::runtime::candle::tape::{candle_step, workload_method, Moment};
use crate::units::bytes::Bytes;
use crate::workload::overhead::Overheads;
use crate::workload::{Device, Workload};

/// The estimator's training path for `--runtime candle`: the simulated step as four
/// events (forward, loss, backward peak, optimizer), with the correction applied to the
/// activation-class bytes (graph and everything but parameter gradients).
pub fn estimate_train(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    corr: &Correction,
    warnings: Vec<String>,
) -> Result<Estimate> {
    let (method, esize) = workload_method(w)?;
    let st = candle_step(
        spec,
        w.batch as usize,
        w.seq_len as usize,
        method,
        esize,
        w.device == Device::Cpu,
    )?;
    let mut rec = Recorder::new(event_overheads(w, ov, corr, None));
    let a = corr.activation_scale;
    let sc = |b: u64| (b as f64 * a).round() as u64;
    let comp = |m: &Moment| Components {
        weights: Bytes(st.weights),
        optimizer_state: Bytes(st.optimizer_state),
        gradients: Bytes(m.param_grads),
        activations: Bytes(sc(m.graph)),
        temporaries: Bytes(sc(m.other)),
        ..Components::default()
    };
    rec.record(
        Phase::Load,
        "weights and AdamW state resident",
        comp(&Moment::default()),
    );
    rec.record(
        Phase::Forward,
        "end of forward (graph kept)",
        comp(&st.forward_peak),
    );
    rec.record(Phase::Loss, "log-softmax + NLL", comp(&st.loss_peak));
    rec.record(
        Phase::Backward,
        "backward peak (graph + gradients in flight)",
        comp(&st.backward_peak),
    );
    rec.record(
        Phase::Optimizer,
        "AdamW step (graph dropped, gradients kept)",
        comp(&st.optimizer_peak),
    );
    let per_layer = st.graph / spec.layers().max(1);
    Ok(recorded(
        ModelSummary::of(spec, st.params_total, st.params_trainable),
        rec,
        ActivationSummary {
            per_layer_bytes: sc(per_layer),
            non_layer_bytes: sc(st.graph - per_layer * spec.layers()),
            total_bytes: sc(st.graph),
            layer_tensors: Vec::new(),
        },
        warnings,
    ))
}
