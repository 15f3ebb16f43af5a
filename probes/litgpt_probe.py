#!/usr/bin/env python3
"""The litgpt probe: exact memory of litgpt's own fine-tuning step, on a CPU, without
weights and without a GPU — what `--framework litgpt` (`--implementation litgpt`) models.

    python3 probes/litgpt_probe.py --model NAME=CONFIG_DIR [--model ...] --out ROWS.csv \
        [--method lora,qlora,full] [--targets qv,attn,all] [--layers 1,2] [--batch 2] \
        [--seq 256] [--lora-rank 8] [--optimizer adamw|sgd]

NAME is a litgpt config name (`litgpt.Config.from_name`), CONFIG_DIR the folder under
tests/data/configs whose config.json the estimator reads for the same model. Each cell
builds litgpt's `GPT` (`litgpt.lora.GPT` for LoRA/QLoRA) under
`torch._subclasses.FakeTensorMode` in bf16, as `fabric.init_module()` does with
`precision="bf16-true"`, sets `model.max_seq_length` as `finetune/*.py fit()` does
(which rebuilds the fp32 rope cache), marks only the LoRA parameters trainable, and runs
two steps of `fit()`'s loop body with CUDA kernel semantics (trace_probe.py
`gpu_sdpa` / `cuda_routing`):

- forward under the bf16 default dtype, then Lightning Fabric's `convert_output` to
  fp32 (`lightning/fabric/wrappers.py` `_FabricModule.forward`, lightning 2.4);
- LoRA/QLoRA: `model(ids, lm_head_chunk_size=128)`, `logits[-1] = logits[-1][..., :-1,
  :]`, `chunked_cross_entropy(logits, targets[..., 1:])` (finetune/lora.py); full:
  `chunked_cross_entropy(model(ids)[..., :-1, :], targets[..., 1:])` (finetune/full.py);
- `loss.backward()`, the optimizer step, `zero_grad()`; `logits` and `loss` stay bound
  until the next iteration rebinds them, as in `fit()`.

QLoRA replaces every `nn.Linear` (the head's too) by an emulation of Lightning's
`BitsandbytesPrecision` NF4 linear on bitsandbytes 0.42.0 (the version litgpt pinned
until Dec 2024): 4-bit weight storage (`numel/2` uint8 + an fp32 absmax per 64),
`MatMul4Bit.forward` dequantizing to the fp16 quantization dtype (Fabric quantizes
from `weight.to(torch.half)`) then `.to(A.dtype)`, keeping `ctx.tensors = (A, B)`; the
backward dequantizes again. bitsandbytes itself needs a GPU, so this part is an
emulation of its autograd code, not the library.

Per cell: `peak_bytes` (the highest live total over the second step, parameters,
optimizer state and what the loop holds from the first step included) and
`live_after_loss_bytes` (a third step started with nothing of earlier steps held: the
storages alive after its loss minus those alive when it started — what the step keeps
for backward, the fp32 logits included), exact storage
bytes, no allocator rounding. The rows are what tests/it/litgpt.rs checks the ledger
against (per layer: depth 2 minus depth 1; whole step: the peak).
"""

import argparse
import csv
import gc
import os
import sys

COLUMNS = ["model", "config", "method", "targets", "lora_rank", "lora_dropout", "batch",
           "seq", "layers", "optimizer", "status", "live_after_loss_bytes", "peak_bytes",
           "param_bytes", "params_total", "trainable_params", "litgpt", "torch", "error"]

TARGETS = {"qv": "q,v", "attn": "q,k,v,o", "all": "q,k,v,o,mlp"}


def fake_nf4(torch, a_keep=True):
    """bitsandbytes 0.42.0 `MatMul4Bit` under Lightning's BitsandbytesPrecision."""

    class MatMul4Bit(torch.autograd.Function):
        @staticmethod
        def forward(ctx, A, B, shape):
            w16 = torch.empty(shape, dtype=torch.float16, device=A.device)  # dequantize_4bit
            w = w16.to(A.dtype)
            del w16
            out = torch.nn.functional.linear(A, w)
            ctx.shape = shape
            ctx.tensors = (A, B) if a_keep else (None, B)
            return out

        @staticmethod
        def backward(ctx, g):
            w16 = torch.empty(ctx.shape, dtype=torch.float16, device=g.device)
            w = w16.to(g.dtype)
            del w16
            return torch.matmul(g, w), None, None

    class Linear4bit(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            n = lin.weight.numel()
            self.shape = tuple(lin.weight.shape)
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.register_buffer("w4", torch.empty((n + 1) // 2, dtype=torch.uint8))
            self.register_buffer("absmax", torch.empty(n // 64, dtype=torch.float32))
            self.bias = lin.bias

        @property
        def weight(self):
            return self.w4

        def forward(self, x):
            y = MatMul4Bit.apply(x, self.w4, self.shape)
            return y if self.bias is None else y + self.bias

    def convert(m):
        for name, ch in m.named_children():
            if isinstance(ch, torch.nn.Linear):
                setattr(m, name, Linear4bit(ch))
            else:
                convert(ch)
    return convert


def run_cell(c, versions):
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import trace_probe as tp
    from torch._subclasses.fake_tensor import FakeTensorMode
    import litgpt.lora as L
    import litgpt.model as M
    from litgpt.config import Config
    from litgpt.utils import chunked_cross_entropy

    t = set(TARGETS[c["targets"]].split(",")) if c["method"] != "full" else set()
    # layers 0: the model's own depth
    depth = {"n_layer": c["layers"]} if c["layers"] else {}
    if c["method"] == "full":
        cfg = Config.from_name(c["model"], **depth)
        make = M.GPT
    else:
        cfg = L.Config.from_name(
            c["model"], **depth, lora_r=c["lora_rank"], lora_alpha=2 * c["lora_rank"],
            lora_dropout=c["lora_dropout"], lora_query="q" in t, lora_key="k" in t,
            lora_value="v" in t, lora_projection="o" in t, lora_mlp="mlp" in t, lora_head=False)
        make = L.GPT
    sdpa, _ = tp.gpu_sdpa()
    undo = tp.cuda_routing(sdpa)
    tracker = tp.Tracker()
    try:
        with FakeTensorMode(allow_non_fake_inputs=False):
            torch.set_default_dtype(torch.bfloat16)  # fabric.init_module(), bf16-true
            model = make(cfg)
            torch.set_default_dtype(torch.float32)
            model.max_seq_length = c["seq"]  # fit(): rebuilds cos/sin in fp32
            if c["method"] != "full":
                L.mark_only_lora_as_trainable(model)
            if c["method"] == "qlora":
                fake_nf4(torch)(model)
            params = list(model.parameters())
            trainable = [p for p in params if p.requires_grad]
            if c["optimizer"] == "adamw":
                opt = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
            else:
                opt = torch.optim.SGD(trainable, lr=1e-4)
            ids = torch.randint(0, cfg.vocab_size, (c["batch"], c["seq"]))
            for x in params + list(model.buffers()) + [ids]:
                tracker.see(x)
            loop = {}

            def step():
                m0 = tracker.mark()
                start = dict(tracker.live)
                torch.set_default_dtype(torch.bfloat16)  # Fabric's forward_context
                if c["method"] == "full":
                    logits = model(ids)
                else:
                    logits = model(ids, lm_head_chunk_size=128)
                torch.set_default_dtype(torch.float32)
                # Fabric's convert_output: to torch.get_default_dtype()
                if isinstance(logits, list):
                    logits = [x.to(torch.float32) for x in logits]
                else:
                    logits = logits.to(torch.float32)
                loop.pop("logits", None)
                if c["method"] == "full":
                    loss = chunked_cross_entropy(logits[..., :-1, :], ids[..., 1:])
                else:
                    logits[-1] = logits[-1][..., :-1, :]
                    loss = chunked_cross_entropy(logits, ids[..., 1:])
                loop.pop("loss", None)
                after = tracker.live_bytes()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                loop["logits"], loop["loss"] = logits, loss
                del logits, loss
                m1 = tracker.mark()
                return after, tracker.peak_between(m0, m1, start)

            with tp.make_mode(tracker):
                step()
                gc.collect()
                _, peak = step()
                # what one step keeps, with nothing of an earlier step held
                loop.clear()
                gc.collect()
                base = tracker.live_bytes()
                after, _ = step()
                loop.clear()
            nbytes = lambda ps: sum(p.untyped_storage().nbytes() for p in ps)  # noqa: E731
            row = {
                "status": "ok",
                "live_after_loss_bytes": after - base,
                "peak_bytes": peak,
                "param_bytes": nbytes(params) + nbytes(list(model.buffers())),
                "params_total": sum(p.numel() for p in params),
                "trainable_params": sum(p.numel() for p in trainable),
            }
            del model, opt, params, trainable, ids
    finally:
        undo()
        gc.collect()
    row.update(versions)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="LITGPT_NAME=CONFIG_DIR")
    ap.add_argument("--out", required=True)
    ap.add_argument("--method", default="lora,qlora")
    ap.add_argument("--targets", default="attn,all")
    ap.add_argument("--layers", default="1,2", help="depths to build; `full` = the model's own")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    a = ap.parse_args(argv)
    import torch
    import litgpt
    versions = {"litgpt": getattr(litgpt, "__version__", "") or _dist_version("litgpt"),
                "torch": torch.__version__}
    cells = []
    for spec in a.model:
        name, _, cfg = spec.partition("=")
        for method in a.method.split(","):
            for targets in (a.targets.split(",") if method != "full" else ["none"]):
                for layers in a.layers.split(","):
                    cells.append({"model": name, "config": cfg or name, "method": method,
                                  "targets": targets,
                                  "lora_rank": a.lora_rank if method != "full" else 0,
                                  "lora_dropout": a.lora_dropout if method != "full" else 0.0,
                                  "batch": a.batch, "seq": a.seq,
                                  "layers": 0 if layers == "full" else int(layers),
                                  "optimizer": a.optimizer})
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for i, c in enumerate(cells):
            row = dict(c)
            try:
                row.update(run_cell(c, versions))
            except Exception as e:  # a refused cell is a row, not a crash
                row.update({"status": "error", "error": f"{type(e).__name__}: {e}"}, **versions)
            w.writerow({k: row.get(k, "") for k in COLUMNS})
            f.flush()
            print(f"[{i + 1}/{len(cells)}] {c['model']} {c['method']} {c['targets']} L{c['layers']}: "
                  f"{row['status']} {row.get('peak_bytes', row.get('error', ''))}", file=sys.stderr)


def _dist_version(name):
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    main()
