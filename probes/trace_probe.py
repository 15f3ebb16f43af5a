#!/usr/bin/env python3
"""The trace probe: exact PyTorch memory of a training step, for any architecture
transformers can build, on a CPU, without weights and without a GPU.

    python3 probes/trace_probe.py --config CONFIG.json [--config ...] --out ROWS.csv \
        [--layers 1,2] [--batch 1] [--seq 128] [--dtype bf16,amp_bf16] \
        [--attn eager,sdpa] [--grad-ckpt none,nonreentrant] \
        [--mode full,lora_all,lora_attn,...,dora_attn,lorafa_attn,adalora_attn,vera_attn,ia3,ln_tuning] \
        [--semantics cpu,cuda] [--engine fake|real] [--optimizer]

Each cell of the cross product builds the model from its config.json with
`AutoModelForCausalLM.from_config` (`num_hidden_layers` = --layers, full width, random
init, no download) inside `torch._subclasses.FakeTensorMode` (`--engine fake`: shapes,
dtypes, dispatch, autograd and the SDPA backend choice run; no arithmetic) or on real
CPU tensors (`--engine real`, for checking the fake engine on scaled-down configs), then
runs forward (train mode, `use_cache=False`, random `input_ids`, `labels=input_ids`) →
`loss.backward()` → optionally one AdamW step, under a `TorchDispatchMode` that sees
every op's outputs and tracks each output storage's lifetime with `weakref.finalize` on
its `UntypedStorage` (PyTorch keeps one Python object per live storage, so the callback
fires exactly when the last tensor using it dies; the tracker holds no strong
reference, so lifetimes are unchanged). Parameters' storages are excluded from the
activation figures.

Recorded per cell (the columns of tests/data/oracle/activations.csv, plus the
optimizer phase and the versions):
- `live_after_fwd_bytes`: non-parameter storages alive after the forward with only the
  loss kept (what autograd holds for backward, plus the inputs);
- `saved_*`: what autograd's pack hook (`torch.autograd.graph.saved_tensors_hooks`)
  received, distinct storages once (`saved_bytes_storage`) and summed over pack calls
  (`saved_bytes_tensors`), split by the module that packed it and by dtype;
- `peak_fwd_bytes`, `peak_bwd_bytes` (with gradients accumulated so far),
  `peak_bwd_excl_grads`, `grads_bytes`; with --optimizer `peak_opt_bytes` (during
  `step`, live non-parameter bytes incl. gradients and state) and `opt_state_bytes`.
  Peaks are op-granular: no kernel workspaces, no allocator rounding.

Recipes: `bf16` = parameters and compute in bf16; `amp_bf16` = fp32 parameters under
`torch.autocast(device, bfloat16)`. LoRA: peft `LoraConfig(r=16, lora_alpha=32,
lora_dropout=0, bias="none")` (`lora_dropout=0.05` in the `*_drop` modes), `all-linear` or
the attention projections. Checkpointing:
`gradient_checkpointing_enable(use_reentrant=...)`.

`--semantics cuda`: what a GPU keeps, on fake CPU tensors (fake CUDA tensors need a CUDA
context in backward, pytorch#92627): `F.scaled_dot_product_attention` is routed to the
kernel a GPU picks (`sdp_utils.cpp` `select_sdp_backend`, priority flash → efficient →
math): flash attention when there is no explicit mask, the dtype is fp16/bf16 and
head_dim is a multiple of 8 up to 256, else memory-efficient attention (math with GQA);
dropout to the fused `native_dropout` (bool mask); AdamW to its foreach implementation.
The CUDA kernels' meta functions give their outputs. Not emulated yet: CUDA autocast's
op lists (`amp_bf16` cells with CUDA semantics are refused).

Vision-language configs (a `vision_config`; LLaVA): the model is built with
`AutoModelForImageTextToText`, the decoder has --layers layers and the vision tower
--vision-layers; each sequence starts with --images × the tower's image tokens (what the
processor expands `<image>` into), then random text, and `pixel_values` carry the images.
`--vision` says what trains on the vision side: `full`, `projector` (tower frozen) or
`frozen` (both frozen) with `--mode full`; `lora` (the LoRA targets reach the tower and the
projector, peft's all-linear) or `frozen` (the language model's linears only) with LoRA.

Versions of torch, transformers and peft are written into every row.
"""

import argparse
import csv
import gc
import json
import os
import re
import sys
import weakref

DEBUG = bool(os.environ.get("TRACE_PROBE_SAVED"))

COLUMNS = [
    "model", "config", "layers", "batch", "seq", "dtype", "attn_impl", "grad_ckpt", "mode",
    "engine", "status", "saved_bytes_storage", "saved_bytes_tensors", "logits_bytes",
    "live_after_fwd_bytes", "peak_fwd_bytes", "peak_bwd_bytes", "peak_bwd_excl_grads",
    "grads_bytes", "trainable_params", "n_saved", "n_saved_storages", "saved_embed",
    "saved_layers", "saved_final_norm", "saved_lm_head", "saved_top", "saved_rope",
    "saved_vision", "saved_other", "saved_fp32_bytes", "saved_bf16_bytes",
    "saved_otherdtype_bytes", "hidden_size", "vocab_size",
    # beyond the oracle's columns
    "model_type", "params_total", "param_bytes", "peak_opt_bytes", "opt_state_bytes",
    "sdpa_kernel", "images", "vision_layers", "vision_mode", "image_tokens", "image_size",
    "torch", "transformers", "peft", "error",
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", required=True,
                   help="a config.json (NAME=PATH names the row's model; default the folder name)")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", default="1,2")
    p.add_argument("--batch", default="1")
    p.add_argument("--seq", default="128")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--attn", default="eager,sdpa")
    p.add_argument("--grad-ckpt", default="none")
    p.add_argument("--mode", default="full")
    p.add_argument("--images", default="1",
                   help="vision-language configs (a `vision_config`): images per sequence")
    p.add_argument("--image-size", default="",
                   help="vision-language configs with anyres tiles (llava_onevision): the images' "
                        "WIDTHxHEIGHT before preprocessing (default: the tower's square)")
    p.add_argument("--vision-layers", default="2",
                   help="vision-language configs: the vision tower's depth")
    p.add_argument("--vision", default="auto",
                   help="vision-language configs: what trains on the vision side: frozen, "
                        "projector, full (with --mode full), lora (LoRA modes reach the tower "
                        "and projector), auto (full with --mode full, lora with LoRA modes)")
    p.add_argument("--semantics", default="cpu")
    p.add_argument("--engine", default="fake", choices=["fake", "real"])
    p.add_argument("--optimizer", action="store_true", help="also run one AdamW step")
    p.add_argument("--override", action="append", default=[],
                   help="KEY=JSON set in every config (e.g. hidden_size=64 for a scaled-down check)")
    p.add_argument("--scale-down", action="store_true",
                   help="hidden 64, 4 heads, vocab 256, MLP 128: the check against --engine real")
    p.add_argument("--dry-run", action="store_true", help="list the cells; needs no torch")
    return p.parse_args(argv)


def split(s, conv=str):
    return [conv(x) for x in s.split(",") if x.strip()]


def cells(args):
    for spec in args.config:
        name, _, path = spec.rpartition("=")
        if not name:
            name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        for layers in split(args.layers, int):
            for batch in split(args.batch, int):
                for seq in split(args.seq, int):
                    for dtype in split(args.dtype):
                        for attn in split(args.attn):
                            for ckpt in split(args.grad_ckpt):
                                for mode in split(args.mode):
                                    for sem in split(args.semantics):
                                        base = dict(model=name, path=path, layers=layers,
                                                    batch=batch, seq=seq, dtype=dtype,
                                                    attn_impl=attn, grad_ckpt=ckpt,
                                                    mode=mode, semantics=sem)
                                        if not is_vlm(path):
                                            yield base
                                            continue
                                        for images in split(args.images, int):
                                            for vl in split(args.vision_layers, int):
                                                for vis in split(args.vision):
                                                    if vis == "auto":
                                                        vis = "full" if mode == "full" else "lora"
                                                    yield dict(base, images=images,
                                                               vision_layers=vl, vision=vis,
                                                               image_size=args.image_size)


def is_vlm(path):
    try:
        return "vision_config" in json.load(open(path))
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- the tracker

class Tracker:
    """Live bytes of every storage an op outputs, by lifetime (weakref.finalize)."""

    def __init__(self):
        self.live = {}          # storage key -> bytes
        self.excluded = set()   # parameter / buffer / input storages
        self.params = set()     # parameter / buffer storages
        self.events = []        # (+bytes | -bytes, key) in order
        self.origin = {}        # event index -> (op, module, shape, dtype) that made it (debugging)
        self.origin_now = {}    # storage key -> origin of the storage alive under it now
        self.origin_at_start = {}  # origin_now when the phase dump_peak shows began
        self.where = None       # a callable naming the current module

    @staticmethod
    def key(st):
        return st._cdata

    def see(self, t, op=None):
        import torch
        if not isinstance(t, torch.Tensor):
            return
        try:
            st = t.untyped_storage()
        except Exception:
            return  # sparse / nested: none in these models
        k = self.key(st)
        if k in self.live:
            return
        n = st.nbytes()
        self.live[k] = n
        if DEBUG:
            # keys are reused once a storage dies: an origin belongs to the event that
            # made the storage, and every new storage gets one, even when it is first
            # seen outside an op (a pack hook)
            self.origin[len(self.events)] = (op or "(no op)", self.where() if self.where else "",
                                             tuple(t.shape), str(t.dtype)[6:])
            self.origin_now[k] = self.origin[len(self.events)]
        self.events.append((n, k))
        weakref.finalize(st, self._free, k)

    def _free(self, k):
        n = self.live.pop(k, None)
        if n is not None:
            self.events.append((-n, k))

    def exclude_tensors(self, tensors):
        for t in tensors:
            self.see(t)
            self.excluded.add(self.key(t.untyped_storage()))

    def mark(self):
        return len(self.events)

    def live_bytes(self, also_excluded=()):
        ex = self.excluded | set(also_excluded)
        return sum(n for k, n in self.live.items() if k not in ex)

    def dump_peak(self, start, end, base_live):
        """Debugging: the storages alive at the peak of events[start:end], with the op
        and module that made each."""
        live = {k: (n, self.origin_at_start.get(k)) for k, n in base_live.items()
                if k not in self.excluded}
        cur = sum(n for n, _ in live.values())
        best, best_live, best_i = cur, dict(live), start
        trail = []
        for i, (n, k) in enumerate(self.events[start:end], start):
            if isinstance(k, tuple) or k in self.excluded:
                continue
            if n > 0:
                live[k] = (n, self.origin.get(i))
            else:
                trail.append((i, n, live.get(k, (0, None))[1]))
                live.pop(k, None)
            if n > 0:
                trail.append((i, n, self.origin.get(i)))
            cur += n
            if cur > best:
                best, best_live, best_i = cur, dict(live), i
            if i == int(os.environ.get("TRACE_PROBE_AT", "-1")):
                # TRACE_PROBE_AT=i: the live set after event i
                print(f"  live after event {i}: {cur} bytes", file=sys.stderr)
                for _, (b, o) in sorted(live.items(), key=lambda kv: -kv[1][0]):
                    print(f"    {b:>12} {o}", file=sys.stderr)
        # TRACE_PROBE_TRAIL=N: the N storage events up to the peak, with the running total
        n_trail = int(os.environ.get("TRACE_PROBE_TRAIL", "0"))
        if n_trail:
            upto = [e for e in trail if e[0] <= best_i][-n_trail:]
            run = best - sum(n for _, n, _ in upto)
            for i, n, o in upto:
                run += n
                print(f"    ev {i:>7} {n:>+12} {run:>12} {o}", file=sys.stderr)
        print(f"  peak {best} bytes:", file=sys.stderr)
        for k, (n, o) in sorted(best_live.items(), key=lambda kv: -kv[1][0]):
            print(f"    {n:>12} {o}", file=sys.stderr)

    def accumulated(self, grad):
        """Marks the moment a gradient became a parameter's `.grad` (a post-accumulate
        hook): from then on `peak_between(.., drop_accumulated=True)` leaves it out."""
        self.events.append((0, ("acc", self.key(grad.untyped_storage()))))

    def peak_between(self, start, end, base_live, drop_accumulated=False):
        """Max live non-excluded bytes over events[start:end], starting from the live
        set `base_live` (key -> bytes) at `start`; with `drop_accumulated`, a gradient
        stops counting once it is accumulated into `.grad`."""
        skip = set(self.excluded)
        size = dict(base_live)
        cur = sum(n for k, n in base_live.items() if k not in skip)
        peak = cur
        for n, k in self.events[start:end]:
            if isinstance(k, tuple):
                if drop_accumulated and k[1] not in skip:
                    skip.add(k[1])
                    cur -= size.get(k[1], 0) if k[1] in size else 0
                continue
            if k in skip:
                continue
            if n > 0:
                size[k] = n
            else:
                size.pop(k, None)
            cur += n
            peak = max(peak, cur)
        return peak


def make_mode(tracker):
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                tracker.see(t, str(func))
            return out

    return Track()


# ---------------------------------------------------------------- SDPA as a GPU runs it

def gpu_sdpa():
    """`F.scaled_dot_product_attention` with the backend a CUDA GPU selects (see the
    module doc); returns (function, list that records the kernels used)."""
    import torch
    aten = torch.ops.aten
    used = []

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        d = q.shape[-1]
        gqa = enable_gqa and k.shape[-3] != q.shape[-3]
        flash_ok = (attn_mask is None and q.dtype in (torch.float16, torch.bfloat16)
                    and d % 8 == 0 and d <= 256)
        if flash_ok:
            # FlashAttention-2 takes fewer k/v heads natively (GQA/MQA)
            used.append("flash")
            return aten._scaled_dot_product_flash_attention(
                q, k, v, dropout_p, is_causal, False, scale=scale)[0]
        if gqa:
            # memory-efficient attention has no GQA: a GPU runs the math kernel
            used.append("math")
            return aten._scaled_dot_product_attention_math(
                q, k, v, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=True)[0]
        used.append("efficient")
        bias = attn_mask
        if bias is not None and bias.dtype == torch.bool:
            bias = torch.zeros(bias.shape, dtype=q.dtype, device=q.device).masked_fill_(
                bias.logical_not(), float("-inf"))
        grad = q.requires_grad or k.requires_grad or v.requires_grad
        return aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, grad, dropout_p, is_causal, scale=scale)[0]

    return sdpa, used


def cuda_routing(sdpa):
    """Route the ops whose CUDA kernel keeps other tensors than the CPU one: SDPA (see
    `gpu_sdpa`) and dropout (on CUDA `torch.dropout` is the fused `native_dropout`, which
    keeps a bool mask — ATen Dropout.cpp `is_fused_kernel_acceptable`; on CPU it keeps a
    mask in the input's dtype). Returns an undo function."""
    import torch
    F = torch.nn.functional
    orig_sdpa, orig_drop = F.scaled_dot_product_attention, F.dropout

    def dropout(x, p=0.5, training=True, inplace=False):
        if training and 0.0 < p < 1.0 and x.numel() > 0:
            return torch.native_dropout(x, p, True)[0]
        return orig_drop(x, p, training, inplace)

    F.scaled_dot_product_attention = sdpa
    F.dropout = dropout

    def undo():
        F.scaled_dot_product_attention = orig_sdpa
        F.dropout = orig_drop
    return undo


# ---------------------------------------------------------------- one cell

def module_kind(name):
    n = name.lower()
    if any(x in n for x in ("vision", "visual", "image", "multi_modal_projector", "mm_projector")):
        return "vision"
    if "rotary" in n or n.endswith("rope"):
        return "rope"
    parts = n.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layers", "h", "blocks", "layer") and parts[i + 1].isdigit():
            return "layers"
    if any(x in n for x in ("embed_tokens", "wte", "wpe", "word_embeddings", "embed_in", "embeddings")):
        return "embed"
    if "lm_head" in n or "embed_out" in n:
        return "lm_head"
    if any(n.endswith(x) for x in ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")):
        return "final_norm"
    return "other"


def run_cell(c, args, versions):
    import torch
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg_json = json.load(open(c["path"]))
    for o in args.override:
        k, _, v = o.partition("=")
        cfg_json[k] = json.loads(v)
    vlm = "vision_config" in cfg_json
    text_json = cfg_json
    if vlm:
        # the decoder's depth is the text config's; the tower's is --vision-layers
        base = cfg_json.get("text_config")
        if base is None and cfg_json.get("model_type") in ("qwen2_vl", "qwen2_5_vl"):
            # Qwen2-VL's text keys sit at the top level (Qwen2VLConfig builds its
            # text_config from them)
            base = {k: v for k, v in cfg_json.items() if k not in ("vision_config", "model_type")}
        cfg_json["text_config"] = text_json = dict(base or {})
        depth = "depth" if cfg_json.get("model_type") in ("qwen2_vl", "qwen2_5_vl") else "num_hidden_layers"
        cfg_json["vision_config"] = dict(cfg_json["vision_config"], **{depth: c["vision_layers"]})
    text_json["num_hidden_layers"] = c["layers"]
    for k in ("n_layer", "num_layers"):
        if k in text_json:
            text_json[k] = c["layers"]
    for k in ("layer_types",):
        if isinstance(text_json.get(k), list):
            text_json[k] = text_json[k][: c["layers"]]
    cfg = transformers.AutoConfig.for_model(**cfg_json)
    cfg.use_cache = False
    if args.scale_down:
        scale_down(cfg)
    row = {k: "" for k in COLUMNS}
    row.update(model=c["model"], config=c["path"], layers=c["layers"], batch=c["batch"], seq=c["seq"],
               dtype=c["dtype"], attn_impl=c["attn_impl"], grad_ckpt=c["grad_ckpt"],
               mode=c["mode"], engine=f"{args.engine}_{c['semantics']}",
               model_type=cfg_json.get("model_type", ""), **versions)
    tcfg = cfg.get_text_config() if vlm else cfg
    row["hidden_size"] = getattr(tcfg, "hidden_size", "")
    row["vocab_size"] = getattr(tcfg, "vocab_size", "")
    if vlm:
        row.update(images=c["images"], vision_layers=c["vision_layers"], vision_mode=c["vision"],
                   image_size=c.get("image_size", ""))
        # get_placeholder_mask compares the image-token count (data) with the features'
        # through torch_compilable_check, which a fake tensor cannot answer; the inputs
        # are built to match (vlm_inputs)
        os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
        if args.engine == "fake":
            # SigLIP's init draws a truncated normal by rejection (data-dependent);
            # the values are never read on fake tensors
            import transformers.initialization as tinit
            tinit.trunc_normal_ = lambda t, *a, **k: t
    # CUDA semantics run on fake *CPU* tensors: PyTorch's autograd engine needs a CUDA
    # context for fake CUDA tensors (pytorch#92627), which no GPU-less machine has. The
    # CUDA kernels' meta functions run on CPU fake tensors, so the kernels a GPU picks
    # are routed explicitly (see `cuda_routing`).
    device = torch.device("cpu")
    if c["semantics"] == "cuda" and c["dtype"] == "amp_bf16":
        raise NotImplementedError(
            "amp_bf16 with CUDA semantics: CPU autocast's fp32 op list is not CUDA's; not emulated yet")
    amp = c["dtype"] == "amp_bf16"
    param_dtype = torch.float32 if amp else torch.bfloat16
    torch.manual_seed(0)

    tracker = Tracker()
    fake = FakeTensorMode(allow_non_fake_inputs=False) if args.engine == "fake" else None
    restore = []
    sdpa_used = []
    if c["semantics"] == "cuda":
        sdpa, sdpa_used = gpu_sdpa()
        restore.append(cuda_routing(sdpa))
    if fake is not None:
        restore.append(see_fake_as_real())
    try:
        ctx = fake if fake is not None else _Null()
        with ctx:
            with torch.device(device):
                auto = (transformers.AutoModelForImageTextToText if vlm
                        else transformers.AutoModelForCausalLM)
                model = auto.from_config(cfg, attn_implementation=c["attn_impl"], dtype=param_dtype)
            if c["grad_ckpt"] != "none":
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
                    "use_reentrant": c["grad_ckpt"] == "reentrant"})
            if c["mode"] != "full":
                model = apply_peft(model, c)
                if c["grad_ckpt"] != "none":
                    model.enable_input_require_grads()
            if vlm:
                freeze_vision(model, c)
            model.train()
            params = list(model.parameters())
            row["params_total"] = sum(p.numel() for p in params)
            row["trainable_params"] = sum(p.numel() for p in params if p.requires_grad)
            row["param_bytes"] = sum(p.untyped_storage().nbytes() for p in params)
            tracker.exclude_tensors(params + list(model.buffers()))
            tracker.params = set(tracker.excluded)
            inputs = {}
            if vlm:
                ids, inputs["pixel_values"], row["image_tokens"], extra = vlm_inputs(cfg, c, param_dtype, device)
                inputs.update(extra)
            else:
                ids = torch.randint(0, cfg.vocab_size, (c["batch"], c["seq"]), device=device)
            labels = ids.clone()
            tracker.exclude_tensors([ids, labels, *(v for v in inputs.values() if hasattr(v, "untyped_storage"))])
            for p in params:
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(lambda q: tracker.accumulated(q.grad))

            # module attribution of saved tensors
            stack = []
            names = {}
            for n, m in model.named_modules():
                names[id(m)] = n
            hooks = []
            def enter(mod, a):
                stack.append(names[id(mod)])

            def leave(mod, a, o):
                # a forward hook's return value would replace the output: return None
                if stack:
                    stack.pop()

            for m in model.modules():
                hooks.append(m.register_forward_pre_hook(enter))
                hooks.append(m.register_forward_hook(leave))
            saved = {"storages": {}, "tensors": 0, "n": 0, "by": {}, "dtype": {}}

            def pack(t):
                try:
                    st = t.untyped_storage()
                except Exception:
                    return t
                k = st._cdata
                n = st.nbytes()
                if k in tracker.params:
                    return t  # weights saved by their ops are parameters, not activations
                saved["n"] += 1
                saved["tensors"] += t.numel() * t.element_size()
                if k not in saved["storages"]:
                    saved["storages"][k] = n
                    kind = module_kind(stack[-1]) if stack else "top"
                    if kind == "other" and stack and stack[-1] == "":
                        kind = "top"
                    if os.environ.get("TRACE_PROBE_SAVED"):
                        print(f"  saved {kind:10} {stack[-1] if stack else '':48} {tuple(t.shape)} "
                              f"{str(t.dtype)[6:]} {n}", file=sys.stderr)
                    saved["by"][kind] = saved["by"].get(kind, 0) + n
                    dk = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(t.dtype, "otherdtype")
                    saved["dtype"][dk] = saved["dtype"].get(dk, 0) + n
                # a detached alias (same storage): returning `t` itself would make a node
                # that saves its own output (softmax, sigmoid) hold a tensor whose grad_fn
                # is that node, a cycle Python's gc cannot see through autograd's C++
                # nodes, so a branch the loss never reaches (the vision tower's layers
                # after the feature layer) would stay alive; autograd without hooks saves
                # such outputs without their grad_fn
                return t.detach()

            tracker.where = lambda: stack[-1] if stack else ""
            mode = make_mode(tracker)
            gc.collect()
            with mode:
                m0 = tracker.mark()
                base = dict(tracker.live)
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        out = model(input_ids=ids, labels=labels, **inputs)
                loss = out.loss
                row["logits_bytes"] = out.logits.numel() * 2 if out.logits is not None else ""
                m1 = tracker.mark()
                del out
                gc.collect()
                row["peak_fwd_bytes"] = tracker.peak_between(m0, m1, base)
                row["live_after_fwd_bytes"] = tracker.live_bytes()
                if os.environ.get("TRACE_PROBE_LIVE"):
                    # every storage alive after the forward, by the op and module that made it
                    for k, n in tracker.live.items():
                        if k not in tracker.excluded:
                            print(f"  live {n:>12} {tracker.origin_now.get(k)}", file=sys.stderr)
                if os.environ.get("TRACE_PROBE_SAVED"):
                    for k, n in tracker.live.items():
                        if k not in tracker.excluded and k not in saved["storages"]:
                            print(f"  alive, not saved: {n} bytes, made by {tracker.origin_now.get(k)}",
                                  file=sys.stderr)
                for h in hooks:
                    h.remove()
                after_fwd = dict(tracker.live)
                tracker.origin_at_start = dict(tracker.origin_now)
                m2 = tracker.mark()
                loss.backward()
                m3 = tracker.mark()
                grads = [p.grad for p in params if p.grad is not None]
                row["grads_bytes"] = sum(g.untyped_storage().nbytes() for g in grads)
                row["peak_bwd_bytes"] = tracker.peak_between(m2, m3, after_fwd)
                if DEBUG:
                    tracker.dump_peak(m2, m3, after_fwd)
                row["peak_bwd_excl_grads"] = tracker.peak_between(m2, m3, after_fwd, drop_accumulated=True)
                del loss
                gc.collect()
                if args.optimizer:
                    # on CUDA, torch.optim defaults to the foreach implementation
                    # (optim/optimizer.py _default_to_fused_or_foreach); on CPU to the loop
                    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4,
                                            foreach=c["semantics"] == "cuda")
                    before = dict(tracker.live)
                    m4 = tracker.mark()
                    opt.step()
                    m5 = tracker.mark()
                    row["peak_opt_bytes"] = tracker.peak_between(m4, m5, before)
                    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
                    row["opt_state_bytes"] = sum(t.untyped_storage().nbytes() for t in state)
                    del opt, state
            row["saved_bytes_storage"] = sum(saved["storages"].values())
            row["saved_bytes_tensors"] = saved["tensors"]
            row["n_saved"] = saved["n"]
            row["n_saved_storages"] = len(saved["storages"])
            for kind in ("embed", "layers", "final_norm", "lm_head", "top", "rope", "vision", "other"):
                row[f"saved_{kind}"] = saved["by"].get(kind, 0)
            for dk in ("fp32", "bf16", "otherdtype"):
                row[f"saved_{dk}_bytes"] = saved["dtype"].get(dk, 0)
            row["sdpa_kernel"] = ",".join(sorted(set(sdpa_used))) if sdpa_used else (
                "native" if c["attn_impl"] == "sdpa" else "")
            row["status"] = "ok"
            del model, params, grads
    except Exception as e:  # a config transformers cannot build, an op without a fake kernel
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"[:300].replace("\n", " ")
        if os.environ.get("TRACE_PROBE_DEBUG"):
            import traceback
            traceback.print_exc()
    finally:
        for r in restore:
            r()
        gc.collect()
    return row


def vlm_inputs(cfg, c, dtype, device):
    """A LLaVA-style batch: `images` × the tower's image tokens per sequence at its start
    (what the processor expands each `<image>` into), random text after it, and
    `pixel_values` [batch × images, channels, size, size] in the parameters' dtype."""
    import torch
    vc = cfg.vision_config
    if cfg.model_type == "llava":
        per_image = (vc.image_size // vc.patch_size) ** 2
        if cfg.vision_feature_select_strategy != "default":
            per_image += 1  # "full" keeps the class token
    elif cfg.model_type == "gemma3":
        per_image = cfg.mm_tokens_per_image  # the projector's pooled tokens
    elif cfg.model_type == "llava_onevision":
        return onevision_inputs(cfg, c, dtype, device)
    elif cfg.model_type == "llava_next":
        return next_inputs(cfg, c, dtype, device)
    elif cfg.model_type in ("qwen2_vl", "qwen2_5_vl"):
        return qwen2_vl_inputs(cfg, c, dtype, device)
    else:
        raise NotImplementedError(f"vision-language model type {cfg.model_type}: llava, llava_next, "
                                  "llava_onevision, gemma3, qwen2_vl, qwen2_5_vl")
    n = c["images"] * per_image
    if n > c["seq"]:
        raise ValueError(f"{c['images']} images of {per_image} tokens do not fit in seq {c['seq']}")
    tok = cfg.image_token_id
    ids = torch.randint(0, cfg.get_text_config().vocab_size, (c["batch"], c["seq"]), device=device)
    ids = torch.where(ids == tok, torch.zeros_like(ids), ids)
    ids[:, :n] = tok
    pixels = torch.randn(c["batch"] * c["images"], vc.num_channels, vc.image_size, vc.image_size,
                         dtype=dtype, device=device)
    extra = {}
    if cfg.model_type == "gemma3":
        # what Gemma3Processor returns beside the ids: 1 on image tokens (the images
        # attend bidirectionally within their block)
        extra["token_type_ids"] = (ids == tok).long()
    return ids, pixels, n, extra


def image_ids(cfg, c, n, per_image, device, reserved=()):
    """Random text ids with `n` × `per_image` image tokens at the start of each sequence
    (less the class token under the "default" strategy); the image and `reserved`
    token ids never appear in the text."""
    import torch
    if cfg.vision_feature_select_strategy == "default":
        per_image -= 1
    total = n * per_image
    if total > c["seq"]:
        raise ValueError(f"{n} images of {per_image} tokens do not fit in seq {c['seq']}")
    tok = cfg.image_token_id
    ids = torch.randint(0, cfg.get_text_config().vocab_size, (c["batch"], c["seq"]), device=device)
    for r in (tok, *reserved):
        ids = torch.where(ids == r, torch.zeros_like(ids), ids)
    ids[:, :total] = tok
    return ids, total


def onevision_inputs(cfg, c, dtype, device):
    """LLaVA-OneVision: one image per sample goes through anyres (the base crop and the
    tiles of the best pinpoint resolution, `image_size_to_num_patches`), several images
    per sample one crop each; the image tokens per image are what the processor counts
    (`LlavaOnevisionProcessor.replace_image_token`, called here on a stand-in)."""
    import types
    import torch
    from transformers.models.llava_onevision import modeling_llava_onevision as mo
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
    vc = cfg.vision_config
    side = vc.image_size
    w_h = c.get("image_size") or f"{side}x{side}"
    width, height = (int(x) for x in w_h.split("x"))
    n = c["images"]
    if n == 1:
        crops = mo.image_size_to_num_patches((height, width), cfg.image_grid_pinpoints, side)
    else:
        crops = 1
    stub = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=cfg.image_grid_pinpoints),
        num_image_tokens=(side // vc.patch_size) ** 2,
        vision_aspect_ratio=cfg.vision_aspect_ratio,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    stub._get_number_of_features = types.MethodType(LlavaOnevisionProcessor._get_number_of_features, stub)
    stub._get_unpadded_features = types.MethodType(LlavaOnevisionProcessor._get_unpadded_features, stub)
    if n == 1:
        per_image = stub._get_number_of_features(height, width, side, side)
    else:
        per_image = stub.num_image_tokens + 1
    ids, total = image_ids(cfg, c, n, per_image, device, (cfg.video_token_id,))
    if n == 1:
        pixels = torch.randn(c["batch"], crops, vc.num_channels, side, side, dtype=dtype, device=device)
    else:
        pixels = torch.randn(c["batch"] * n, vc.num_channels, side, side, dtype=dtype, device=device)
    # plain lists: the model reads them with `.tolist()`, which a fake tensor cannot answer
    extra = {"image_sizes": [[height, width]] * (n * c["batch"]),
             "batch_num_images": [n] * c["batch"]}
    return ids, pixels, total, extra


def next_inputs(cfg, c, dtype, device):
    """LLaVA-NeXT: every image through anyres (`image_size_to_num_patches`: the base crop
    and the tiles of the best pinpoint); the image tokens per image as the processor
    counts them (`LlavaNextProcessor._get_number_of_features`, on a stand-in)."""
    import types
    import torch
    from transformers.models.llava_next import modeling_llava_next as mn
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
    vc = cfg.vision_config
    side = vc.image_size
    w_h = c.get("image_size") or f"{side}x{side}"
    width, height = (int(x) for x in w_h.split("x"))
    n = c["images"]
    crops = mn.image_size_to_num_patches((height, width), cfg.image_grid_pinpoints, side)
    stub = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=cfg.image_grid_pinpoints),
        patch_size=vc.patch_size, num_additional_image_tokens=1)
    stub._get_unpadded_features = types.MethodType(LlavaNextProcessor._get_unpadded_features, stub)
    per_image = LlavaNextProcessor._get_number_of_features(stub, height, width, side, side)
    ids, total = image_ids(cfg, c, n, per_image, device)
    pixels = torch.randn(c["batch"] * n, crops, vc.num_channels, side, side, dtype=dtype, device=device)
    return ids, pixels, total, {"image_sizes": [[height, width]] * (n * c["batch"])}


def smart_resize(height, width, factor, min_pixels=56 * 56, max_pixels=28 * 28 * 1280):
    """transformers 5.24 models/qwen2_vl/image_processing_qwen2_vl.py `smart_resize` (that
    module imports torchvision, which the probe does not need otherwise)."""
    import math
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen2_vl_inputs(cfg, c, dtype, device):
    """Qwen2-VL as its processor builds a batch: each image resized by `smart_resize`
    (default 448x448), flattened into patches of channels x temporal x patch x patch
    (`pixel_values` [patches of every image, 1176]), `image_grid_thw` [1, rows, cols]
    per image, and per image `<|vision_start|>` + rows*cols/merge^2 image tokens +
    `<|vision_end|>` in the text; `mm_token_type_ids` 1 on the image tokens."""
    import torch
    vc = cfg.vision_config
    w_h = c.get("image_size") or "448x448"
    width, height = (int(x) for x in w_h.split("x"))
    patch, merge, temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
    hb, wb = smart_resize(height, width, patch * merge)
    gh, gw = hb // patch, wb // patch
    per_image = gh * gw // (merge * merge)
    n = c["images"]
    if n * (per_image + 2) > c["seq"]:
        raise ValueError(f"{n} images of {per_image} tokens do not fit in seq {c['seq']}")
    tok, start, end = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
    vocab = cfg.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (c["batch"], c["seq"]), device=device)
    for r in (tok, start, end, cfg.video_token_id):
        ids = torch.where(ids == r, torch.zeros_like(ids), ids)
    at = 0
    for _ in range(n):
        ids[:, at] = start
        ids[:, at + 1:at + 1 + per_image] = tok
        ids[:, at + 1 + per_image] = end
        at += per_image + 2
    patches = c["batch"] * n * gh * gw
    pixels = torch.randn(patches, vc.in_channels * temporal * patch * patch, dtype=dtype, device=device)
    grid = torch.tensor([[1, gh, gw]] * (c["batch"] * n), device=device)
    extra = {"image_grid_thw": grid, "mm_token_type_ids": (ids == tok).int()}
    return ids, pixels, n * per_image, extra


VISION_MODULES = ("vision_tower", "multi_modal_projector", "image_newline", "visual")  # + qwen2_vl


def freeze_vision(model, c):
    """Full fine-tuning with the tower (`projector`) or the tower and the projector
    (`frozen`) frozen, as LLaVA's recipes do (`requires_grad_(False)`)."""
    vis = c["vision"]
    if c["mode"] == "full":
        if vis not in ("full", "projector", "frozen"):
            raise ValueError(f"--vision {vis} with --mode full: full, projector or frozen")
        for n, m in model.named_modules():
            last = n.rsplit(".", 1)[-1]
            if last == "vision_tower" and vis != "full" or last == "multi_modal_projector" and vis == "frozen":
                m.requires_grad_(False)
            if last == "visual" and vis != "full":
                # Qwen2-VL: the tower is `visual` without its `merger` (the projector)
                m.requires_grad_(False)
                if vis == "projector":
                    m.merger.requires_grad_(True)
        for n, prm in model.named_parameters():
            # LLaVA-OneVision's image_newline trains with the projector
            if n.rsplit(".", 1)[-1] == "image_newline" and vis == "frozen":
                prm.requires_grad_(False)
    elif vis not in ("lora", "frozen"):
        raise ValueError(f"--vision {vis} with --mode {c['mode']}: lora or frozen")


def scale_down(cfg):
    """A small model of the same architecture (the attribute maps of each config class
    translate hidden_size, num_attention_heads, ... to the family's own keys)."""
    heads = getattr(cfg, "num_attention_heads", 4) or 4
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    group = max(1, heads // kv)
    new_heads = 4
    for k, v in (("hidden_size", 64), ("num_attention_heads", new_heads), ("vocab_size", 256)):
        setattr(cfg, k, v)
    if getattr(cfg, "num_key_value_heads", None) is not None:
        cfg.num_key_value_heads = max(1, new_heads // group)
    if getattr(cfg, "head_dim", None) is not None:
        try:
            cfg.head_dim = 16
        except AttributeError:
            pass  # a property derived from hidden_size / heads (Falcon)
    for k in ("intermediate_size", "ffn_hidden_size", "n_inner"):
        if getattr(cfg, k, None) is not None:
            setattr(cfg, k, 128)
    for k in ("query_pre_attn_scalar",):
        if getattr(cfg, k, None) is not None:
            setattr(cfg, k, 16)
    # ids that must stay inside the smaller vocabulary and widths inside the head
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v >= 256:
            setattr(cfg, k, 0)
    if isinstance(getattr(cfg, "rotary_dim", None), int):
        cfg.rotary_dim = min(cfg.rotary_dim, 8)


class swap_by_set_data:
    """`nn.Module._apply` swaps a FakeTensor parameter with `torch.utils.swap_tensors`,
    which refuses tensors that FakeTensorMode holds weak references to (peft's
    `_move_adapter_to_device_of_base_layer` hits this). Within this context a refused
    swap falls back to `param.data = new`, what `_apply` does for real tensors."""

    def __enter__(self):
        import torch
        self.orig = torch.utils.swap_tensors

        def swap(t1, t2):
            try:
                self.orig(t1, t2)
            except (RuntimeError, TypeError, AssertionError):
                t1.data = t2.data

        torch.utils.swap_tensors = swap
        return self

    def __exit__(self, *a):
        import torch
        torch.utils.swap_tensors = self.orig
        return False


def see_fake_as_real():
    """transformers treats a FakeTensor as a sign of graph tracing
    (`utils/import_utils.py` `is_tracing` → `is_fake_tensor`) and then materializes
    attention masks a real run skips (`masking_utils._ignore_causal_mask_sdpa`). Make
    every transformers module see fake tensors as real, so the Python control flow is a
    real run's (`--engine real` checks it). Returns an undo function."""
    import transformers.utils.import_utils as iu
    orig = iu.is_fake_tensor
    patched = []
    for name, mod in list(sys.modules.items()):
        if (name == "transformers" or name.startswith("transformers.")) and getattr(mod, "is_fake_tensor", None) is orig:
            setattr(mod, "is_fake_tensor", lambda t: False)
            patched.append(mod)

    # the one data-dependent branch of the mask code for our inputs: one unpadded
    # sequence per row with positions 0..s-1 is not packed (what a real run computes)
    import transformers.masking_utils as mu
    orig_packed = mu.find_packed_sequence_indices
    mu.find_packed_sequence_indices = lambda position_ids: None

    def undo():
        for mod in patched:
            setattr(mod, "is_fake_tensor", orig)
        mu.find_packed_sequence_indices = orig_packed
    return undo


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


LORA_MODES = ("lora_all", "lora_attn", "lora_all_model", "lora_attn_model",
              "lora_all_head", "lora_all_head_model", "lora_all_drop", "lora_attn_drop")
# Other PEFT methods, each on the attention projections unless its own default targets
# (peft's per-model-type mapping) are the point: DoRA (use_dora), LoRA-FA (lora_A
# frozen, as peft.optimizers.create_lorafa_optimizer does), AdaLoRA (init_r 16), VeRA
# (r 16), IA3 and LN tuning with peft's default targets for the model type.
PEFT_MODES = ("dora_attn", "lorafa_attn", "adalora_attn", "vera_attn", "ia3", "ln_tuning",
              "prompt_tuning", "prefix_tuning", "loha_attn", "oft_attn", "boft_attn",
              "osf_attn", "osf_attn_legacy")
# `boft_attn`: BOFTConfig(boft_block_size=BOFT_BLOCK, boft_n_butterfly_factor=1) (peft's
# defaults; without its CUDA extension peft forces one butterfly factor anyway);
# `osf_attn`: OSF training OSF_RANK directions of every adapted linear (rank_pattern sets
# each module's effective_rank to min(out, in) - OSF_RANK); `osf_attn_legacy`: the same under
# peft < 0.21 (whose OSF rebuilds the full weight every forward), e.g. with peft 0.20.0
# installed apart and put first on PYTHONPATH
BOFT_BLOCK = 4
OSF_RANK = 16
# `prompt_tuning`: PromptTuningConfig(num_virtual_tokens=PROMPT_TOKENS); the model then runs
# seq + PROMPT_TOKENS positions (peft prepends the prompt and pads the labels with -100);
# `prefix_tuning`: PrefixTuningConfig(num_virtual_tokens=PROMPT_TOKENS), every layer's keys
# and values get that many trained entries before them
PROMPT_TOKENS = 16


def apply_peft(model, c):
    import peft
    mode = c["mode"]
    if mode not in LORA_MODES + PEFT_MODES:
        raise ValueError(f"mode {mode!r}: full, {', '.join(LORA_MODES + PEFT_MODES)}")
    if mode.startswith("lora_all_head"):
        # every linear leaf name (peft's all-linear) plus the output head
        targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                          if type(m).__name__ in ("Linear", "Conv1D")})
    elif mode.startswith("lora_all"):
        targets = "all-linear"
    else:
        targets = attn_targets(model)
    if c.get("vision") == "frozen":
        # the language model's linears only, by full name (peft matches suffixes)
        if targets == "all-linear":
            targets = [n for n, m in model.named_modules()
                       if type(m).__name__ == "Linear" and not n.endswith("lm_head")]
        targets = [t for t in targets if not any(v in t.split(".") for v in VISION_MODULES)]
    if mode in LORA_MODES or mode in ("dora_attn", "lorafa_attn"):
        # `*_drop`: lora_dropout=0.05 (a mask and a dropped copy per adapter)
        cfg = peft.LoraConfig(r=16, lora_alpha=32,
                              lora_dropout=0.05 if mode.endswith("_drop") else 0.0,
                              bias="none", use_dora=mode == "dora_attn",
                              target_modules=targets, task_type="CAUSAL_LM")
    elif mode == "adalora_attn":
        cfg = peft.AdaLoraConfig(init_r=16, target_r=8, lora_alpha=32, lora_dropout=0.0,
                                 total_step=10, target_modules=targets, task_type="CAUSAL_LM")
    elif mode == "oft_attn":
        # r 16 blocks per adapted linear (oft_block_size 0: in_features / r)
        cfg = peft.OFTConfig(r=16, oft_block_size=0, target_modules=targets, task_type="CAUSAL_LM")
    elif mode == "boft_attn":
        cfg = peft.BOFTConfig(boft_block_size=BOFT_BLOCK, boft_n_butterfly_factor=1,
                              target_modules=targets, task_type="CAUSAL_LM")
    elif mode in ("osf_attn", "osf_attn_legacy"):
        legacy = tuple(int(v) for v in peft.__version__.split(".")[:2]) < (0, 21)
        if legacy != (mode == "osf_attn_legacy"):
            raise ValueError(f"mode {mode} with peft {peft.__version__}")
        mins = {n: min(m.weight.shape) for n, m in model.named_modules()
                if type(m).__name__ == "Linear"}
        cfg = peft.OSFConfig(target_modules=targets,
                             rank_pattern={re.escape(t): mins[t] - OSF_RANK for t in targets})
    elif mode == "loha_attn":
        cfg = peft.LoHaConfig(r=16, alpha=32, target_modules=targets, task_type="CAUSAL_LM")
    elif mode == "vera_attn":
        cfg = peft.VeraConfig(r=16, vera_dropout=0.0, target_modules=targets,
                              task_type="CAUSAL_LM")
    elif mode == "ia3":
        cfg = peft.IA3Config(task_type="CAUSAL_LM")
    elif mode == "prompt_tuning":
        cfg = peft.PromptTuningConfig(num_virtual_tokens=PROMPT_TOKENS, task_type="CAUSAL_LM")
    elif mode == "prefix_tuning":
        cfg = peft.PrefixTuningConfig(num_virtual_tokens=PROMPT_TOKENS, task_type="CAUSAL_LM")
    else:
        cfg = peft.LNTuningConfig(task_type="CAUSAL_LM")
        # LNTuningLayer deep-copies the norm; a FakeTensor's deepcopy would bring a new
        # FakeTensorMode with it: keep the current one (a real tensor copies as usual)
        import copy
        import peft.tuners.ln_tuning.layer as ln_layer
        from torch._guards import detect_fake_mode
        w = next(model.parameters())
        mode_now = detect_fake_mode([w])
        memo = {} if mode_now is None else {id(mode_now): mode_now}
        ln_layer.deepcopy = lambda m: copy.deepcopy(m, dict(memo))
    with swap_by_set_data():
        # `*_model`: adapters in the model's dtype (peft's autocast_adapter_dtype=False),
        # as torchtune/litgpt keep them
        model = peft.get_peft_model(model, cfg, autocast_adapter_dtype=not mode.endswith("_model"))
    if mode == "lorafa_attn":
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.requires_grad_(False)
    return model


def attn_targets(model):
    """The attention projections (the oracle's `lora_attn`): every Linear directly under
    an attention module, by full name, so that a name the MLP shares (GPT-2's and
    GPTBigCode's `c_proj`) is not matched there too (peft matches target names as
    suffixes)."""
    import torch
    parents = ("self_attn", "attn", "attention", "self_attention")
    names = sorted(
        n for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "." in n and n.split(".")[-2] in parents
    )
    if not names:
        raise ValueError("no Linear directly under an attention module")
    return names


def main(argv):
    args = parse_args(argv)
    todo = list(cells(args))
    if args.dry_run:
        for c in todo:
            print(json.dumps(c))
        print(f"trace_probe: {len(todo)} cells (dry run)", file=sys.stderr)
        return 0
    import torch
    import transformers
    try:
        import peft
        peft_v = peft.__version__
    except ImportError:
        peft_v = ""
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft_v}
    new = not os.path.exists(args.out)
    with open(args.out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for i, c in enumerate(todo):
            row = run_cell(c, args, versions)
            w.writerow(row)
            f.flush()
            print(f"[{i + 1}/{len(todo)}] {c['model']} L{c['layers']} b{c['batch']} s{c['seq']} "
                  f"{c['dtype']} {c['attn_impl']} {c['grad_ckpt']} {c['mode']} {c['semantics']}: "
                  f"{row['status']} live {row['live_after_fwd_bytes']} {row['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
