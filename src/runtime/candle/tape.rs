//! The estimator's `candle` runtime profile: runs the probe program (`program`) on
//! symbolic tensors and replays candle 0.11.1's memory rules, allocation by allocation.
//!
//! Forward: every op that is not a view (reshape of a contiguous tensor, transpose,
//! narrow, broadcast) allocates its output. A tracked op keeps clones of *all* its
//! inputs, so every storage reachable from the loss stays alive until the graph is
//! dropped; untracked intermediates (frozen LoRA bases) are freed after their last use.
//!
//! Backward (`Tensor::backward`): the nodes are visited in candle's topological order;
//! each node's gradient is removed from the store and freed once propagated; every
//! accumulation `*sum = sum.add(&g)` allocates the sum while the old value still lives
//! (and a first accumulation allocates `zeros_like` first); each op's backward formula
//! allocates its temporaries in source order (e.g. silu: neg, exp, +1, recip, ...).
//! Activations are not released. Gradients of untracked operands (the causal mask, the
//! rotary tables, frozen weights) are computed too and stay in the store.
//!
//! Optimizer (`candle_nn::AdamW::step`, after the graph is dropped): per variable, up to
//! seven parameter-sized temporaries (next m, next v, m̂, v̂, next θ, √v̂, √v̂+ε).
//!
//! Pure: no candle.

use std::collections::HashMap;

use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::runtime::candle::program::{self, Bin, Input, Ops, ParamKind, ProbeMethod, Un};

#[derive(Debug, Clone)]
enum SOp {
    Matmul(usize, usize),
    Binary(usize, usize, Bin),
    Broadcast(usize),
    Affine(usize),
    Unary(usize, Un),
    Sum(usize),
    Max(usize),
    Reshape(usize),
    Transpose(usize),
    Narrow(usize, usize, usize, usize),
    Copy(usize),
    Cat(Vec<usize>),
    IndexSelect(usize, usize),
    Gather(usize, usize),
}

impl SOp {
    /// Arguments in the order candle's graph walk visits them.
    fn args(&self) -> Vec<usize> {
        match self {
            SOp::Matmul(a, b)
            | SOp::Binary(a, b, _)
            | SOp::IndexSelect(a, b)
            | SOp::Gather(a, b) => {
                vec![*a, *b]
            }
            SOp::Cat(v) => v.clone(),
            SOp::Broadcast(a)
            | SOp::Affine(a)
            | SOp::Unary(a, _)
            | SOp::Sum(a)
            | SOp::Max(a)
            | SOp::Reshape(a)
            | SOp::Transpose(a)
            | SOp::Narrow(a, ..)
            | SOp::Copy(a) => vec![*a],
        }
    }
}

#[derive(Debug, Clone)]
struct SNode {
    dims: Vec<usize>,
    strides: Vec<usize>,
    int: bool,
    var: bool,
    op: Option<SOp>,
    storage: usize,
    born: u32,
    last_use: u32,
}

/// Host bytes of a candle tensor's metadata on the CPU (`Arc<Tensor_>`, shape and
/// stride vectors, the op record), and of a storage (`Arc<RwLock<Storage>>`), measured
/// with the counting allocator. Counted only when the meter sees host memory.
pub const CPU_NODE_META: u64 = 208;
pub const CPU_STORAGE_META: u64 = 56;

#[derive(Debug, Clone)]
struct Storage {
    bytes: u64,
    /// Allocated by an op of the step (not a parameter or an input).
    dynamic: bool,
    born: u32,
    last_use: u32,
}

/// Symbolic tensors with candle's storage semantics.
pub struct Tape {
    esize: u64,
    /// Count host metadata (CPU runs).
    meta: bool,
    nodes: Vec<SNode>,
    storages: Vec<Storage>,
    op: u32,
    /// (node, bytes, trainable) of every parameter.
    params: Vec<(usize, u64, bool)>,
}

fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![0; dims.len()];
    let mut acc = 1;
    for i in (0..dims.len()).rev() {
        s[i] = acc;
        acc *= dims[i];
    }
    s
}

fn is_contiguous(dims: &[usize], strides: &[usize]) -> bool {
    let mut acc = 1;
    for (&st, &d) in strides.iter().zip(dims).rev() {
        if d > 1 && st != acc {
            return false;
        }
        acc *= d;
    }
    true
}

fn elems(dims: &[usize]) -> u64 {
    dims.iter().map(|&d| d as u64).product()
}

impl Tape {
    pub fn new(esize: u64, meta: bool) -> Tape {
        Tape {
            esize,
            meta,
            nodes: Vec::with_capacity(1024),
            storages: Vec::with_capacity(1024),
            op: 0,
            params: Vec::new(),
        }
    }

    fn tracked(&self, n: usize) -> bool {
        self.nodes[n].var || self.nodes[n].op.is_some()
    }

    fn bytes(&self, n: usize) -> u64 {
        let nd = &self.nodes[n];
        elems(&nd.dims) * if nd.int { 4 } else { self.esize }
    }

    fn use_(&mut self, n: usize) {
        let s = self.nodes[n].storage;
        self.storages[s].last_use = self.op;
        self.nodes[n].last_use = self.op;
    }

    /// A new node with its own storage.
    fn alloc(
        &mut self,
        dims: Vec<usize>,
        op: Option<SOp>,
        inputs: &[usize],
        dynamic: bool,
    ) -> usize {
        self.op += 1;
        for &i in inputs {
            self.use_(i);
        }
        let any = inputs.iter().any(|&i| self.tracked(i));
        let bytes = elems(&dims) * self.esize;
        self.storages.push(Storage {
            bytes,
            dynamic,
            born: self.op,
            last_use: self.op,
        });
        self.nodes.push(SNode {
            strides: contiguous_strides(&dims),
            dims,
            int: false,
            var: false,
            op: if any { op } else { None },
            storage: self.storages.len() - 1,
            born: self.op,
            last_use: self.op,
        });
        self.nodes.len() - 1
    }

    /// A view of `a`'s storage.
    fn view(&mut self, a: usize, dims: Vec<usize>, strides: Vec<usize>, op: SOp) -> usize {
        self.op += 1;
        self.use_(a);
        let tracked = self.tracked(a);
        let n = SNode {
            dims,
            strides,
            int: self.nodes[a].int,
            var: false,
            op: if tracked { Some(op) } else { None },
            storage: self.nodes[a].storage,
            born: self.op,
            last_use: self.op,
        };
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn leaf(&mut self, dims: &[usize], int: bool, var: bool) -> usize {
        let bytes = elems(dims) * if int { 4 } else { self.esize };
        self.storages.push(Storage {
            bytes,
            dynamic: false,
            born: 0,
            last_use: 0,
        });
        self.nodes.push(SNode {
            dims: dims.to_vec(),
            strides: contiguous_strides(dims),
            int,
            var,
            op: None,
            storage: self.storages.len() - 1,
            born: 0,
            last_use: 0,
        });
        self.nodes.len() - 1
    }
}

fn same_dims(a: &[usize], b: &[usize], what: &str) -> Result<()> {
    if a != b {
        return Err(Error::Layout(format!(
            "{what}: shapes {a:?} and {b:?} differ"
        )));
    }
    Ok(())
}

impl Ops for Tape {
    type T = usize;
    fn dims(&self, t: &usize) -> Vec<usize> {
        self.nodes[*t].dims.clone()
    }
    fn input(&mut self, what: Input, dims: &[usize]) -> Result<usize> {
        let int = matches!(what, Input::TokenIds | Input::Targets | Input::PositionIds);
        Ok(self.leaf(dims, int, false))
    }
    fn param(
        &mut self,
        _name: &str,
        dims: &[usize],
        _k: ParamKind,
        trainable: bool,
    ) -> Result<usize> {
        let n = self.leaf(dims, false, trainable);
        let b = self.bytes(n);
        self.params.push((n, b, trainable));
        Ok(n)
    }
    fn matmul(&mut self, a: &usize, b: &usize) -> Result<usize> {
        let (da, db) = (self.dims(a), self.dims(b));
        let r = da.len();
        if r < 2 || db.len() != r || da[r - 1] != db[r - 2] {
            return Err(Error::Layout(format!("matmul of {da:?} and {db:?}")));
        }
        let mut d = da[..r - 2].to_vec();
        d.extend([da[r - 2], db[r - 1]]);
        Ok(self.alloc(d, Some(SOp::Matmul(*a, *b)), &[*a, *b], true))
    }
    fn binary(&mut self, a: &usize, b: &usize, op: Bin) -> Result<usize> {
        let d = self.dims(a);
        same_dims(&d, &self.dims(b), "binary op")?;
        Ok(self.alloc(d, Some(SOp::Binary(*a, *b, op)), &[*a, *b], true))
    }
    fn broadcast_as(&mut self, a: &usize, dims: &[usize]) -> Result<usize> {
        let (da, sa) = (self.dims(a), self.nodes[*a].strides.clone());
        let left = dims
            .len()
            .checked_sub(da.len())
            .ok_or_else(|| Error::Layout(format!("broadcast {da:?} to {dims:?}")))?;
        let mut st = vec![0; dims.len()];
        for i in 0..da.len() {
            st[left + i] = if da[i] == dims[left + i] {
                sa[i]
            } else if da[i] == 1 {
                0
            } else {
                return Err(Error::Layout(format!("broadcast {da:?} to {dims:?}")));
            };
        }
        Ok(self.view(*a, dims.to_vec(), st, SOp::Broadcast(*a)))
    }
    fn affine(&mut self, a: &usize, _mul: f64, _add: f64) -> Result<usize> {
        let d = self.dims(a);
        Ok(self.alloc(d, Some(SOp::Affine(*a)), &[*a], true))
    }
    fn unary(&mut self, a: &usize, op: Un) -> Result<usize> {
        let d = self.dims(a);
        Ok(self.alloc(d, Some(SOp::Unary(*a, op)), &[*a], true))
    }
    fn sum_keepdim(&mut self, a: &usize, dim: usize) -> Result<usize> {
        let mut d = self.dims(a);
        d[dim] = 1;
        Ok(self.alloc(d, Some(SOp::Sum(*a)), &[*a], true))
    }
    fn max_keepdim(&mut self, a: &usize, dim: usize) -> Result<usize> {
        let mut d = self.dims(a);
        d[dim] = 1;
        Ok(self.alloc(d, Some(SOp::Max(*a)), &[*a], true))
    }
    fn reshape(&mut self, a: &usize, dims: &[usize]) -> Result<usize> {
        let n = &self.nodes[*a];
        if elems(&n.dims) != elems(dims) {
            return Err(Error::Layout(format!("reshape {:?} to {dims:?}", n.dims)));
        }
        if is_contiguous(&n.dims, &n.strides) {
            Ok(self.view(
                *a,
                dims.to_vec(),
                contiguous_strides(dims),
                SOp::Reshape(*a),
            ))
        } else {
            Ok(self.alloc(dims.to_vec(), Some(SOp::Reshape(*a)), &[*a], true))
        }
    }
    fn transpose(&mut self, a: &usize, d1: usize, d2: usize) -> Result<usize> {
        if d1 == d2 {
            return Ok(*a);
        }
        let (mut d, mut s) = (self.dims(a), self.nodes[*a].strides.clone());
        d.swap(d1, d2);
        s.swap(d1, d2);
        Ok(self.view(*a, d, s, SOp::Transpose(*a)))
    }
    fn narrow(&mut self, a: &usize, dim: usize, start: usize, len: usize) -> Result<usize> {
        let mut d = self.dims(a);
        if start + len > d[dim] {
            return Err(Error::Layout(format!(
                "narrow {d:?} at {dim}: {start}+{len}"
            )));
        }
        if start == 0 && len == d[dim] {
            return Ok(*a);
        }
        d[dim] = len;
        let s = self.nodes[*a].strides.clone();
        Ok(self.view(*a, d, s, SOp::Narrow(*a, dim, start, len)))
    }
    fn contiguous(&mut self, a: &usize) -> Result<usize> {
        let n = &self.nodes[*a];
        if is_contiguous(&n.dims, &n.strides) {
            return Ok(*a);
        }
        let d = n.dims.clone();
        Ok(self.alloc(d, Some(SOp::Copy(*a)), &[*a], true))
    }
    fn cat(&mut self, ts: &[&usize], dim: usize) -> Result<usize> {
        if ts.len() == 1 {
            return Ok(*ts[0]);
        }
        let mut d = self.dims(ts[0]);
        d[dim] = ts.iter().map(|t| self.nodes[**t].dims[dim]).sum();
        let args: Vec<usize> = ts.iter().map(|t| **t).collect();
        Ok(self.alloc(d, Some(SOp::Cat(args.clone())), &args, true))
    }
    fn index_select(&mut self, w: &usize, ids: &usize) -> Result<usize> {
        let d = vec![self.nodes[*ids].dims[0], self.nodes[*w].dims[1]];
        Ok(self.alloc(d, Some(SOp::IndexSelect(*w, *ids)), &[*w, *ids], true))
    }
    fn gather(&mut self, x: &usize, ids: &usize, _dim: usize) -> Result<usize> {
        let d = self.dims(ids);
        Ok(self.alloc(d, Some(SOp::Gather(*x, *ids)), &[*x, *ids], true))
    }
}

/// Memory at one moment of the simulated step (bytes above the static part).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moment {
    /// Parameter gradients alive.
    pub param_grads: u64,
    /// Forward graph (activations) alive.
    pub graph: u64,
    /// Everything else: gradients of intermediates and of untracked operands,
    /// backward/optimizer temporaries, forward transients.
    pub other: u64,
}

impl Moment {
    pub fn total(&self) -> u64 {
        self.param_grads + self.graph + self.other
    }
}

/// The simulated candle training step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandleStep {
    /// Every parameter tensor (trainable or frozen).
    pub weights: u64,
    /// AdamW's first and second moments.
    pub optimizer_state: u64,
    /// All parameter gradients after backward.
    pub param_grads: u64,
    /// Forward graph kept from the end of the loss until the graph is dropped.
    pub graph: u64,
    pub forward_peak: Moment,
    pub loss_peak: Moment,
    pub backward_peak: Moment,
    pub optimizer_peak: Moment,
    pub params_total: u64,
    pub params_trainable: u64,
}

impl CandleStep {
    /// Static bytes the calibration subtracts: weights, optimizer state and every
    /// parameter gradient.
    pub fn static_bytes(&self) -> u64 {
        self.weights + self.optimizer_state + self.param_grads
    }
    pub fn peak(&self) -> u64 {
        [
            self.forward_peak,
            self.loss_peak,
            self.backward_peak,
            self.optimizer_peak,
        ]
        .iter()
        .map(|m| m.total())
        .max()
        .unwrap_or(0)
            + self.weights
            + self.optimizer_state
    }
}

/// candle's `sorted_nodes`: depth-first from the loss, then reversed.
fn sorted_nodes(t: &Tape, root: usize) -> Vec<usize> {
    let mut seen: HashMap<usize, bool> = HashMap::new();
    let mut out = Vec::new();
    // iterative DFS reproducing the recursive post-order
    fn walk(t: &Tape, n: usize, seen: &mut HashMap<usize, bool>, out: &mut Vec<usize>) -> bool {
        if let Some(&tg) = seen.get(&n) {
            return tg;
        }
        let node = &t.nodes[n];
        let mut tg = false;
        if node.var {
            tg = true;
        } else if node.int {
        } else if let Some(op) = &node.op {
            for a in op.args() {
                tg |= walk(t, a, seen, out);
            }
        }
        seen.insert(n, tg);
        if tg {
            out.push(n);
        }
        tg
    }
    walk(t, root, &mut seen, &mut out);
    out.reverse();
    out
}

/// Storages reachable from `root` through the ops' inputs.
fn reachable_storages(t: &Tape, root: usize) -> Vec<bool> {
    let mut seen = vec![false; t.nodes.len()];
    let mut st = vec![false; t.storages.len()];
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if seen[n] {
            continue;
        }
        seen[n] = true;
        st[t.nodes[n].storage] = true;
        if let Some(op) = &t.nodes[n].op {
            stack.extend(op.args());
        }
    }
    st
}

impl Tape {
    /// Peak of dynamic storages alive during ops `from..=to`, given which storages stay
    /// alive to the end (`keep`, `held`). One sweep over a difference array of the ops:
    /// each storage (and node's metadata) adds its bytes over the ops it is alive in,
    /// so the cost is linear in storages + nodes + ops, not their product.
    fn forward_peak(&self, from: u32, to: u32, keep: &[bool], held: &[usize]) -> u64 {
        let (nm, sm) = if self.meta {
            (CPU_NODE_META, CPU_STORAGE_META)
        } else {
            (0, 0)
        };
        if to < from {
            return 0;
        }
        let mut pinned = vec![false; self.storages.len()];
        for &k in held {
            pinned[k] = true;
        }
        let len = (to - from) as usize + 2;
        let mut diff = vec![0i128; len];
        // alive at op i iff born <= i and (kept to the end or last used at or after i)
        let mut add = |born: u32, last_use: u32, to_end: bool, bytes: u64| {
            let start = born.max(from);
            let end = if to_end { to } else { last_use.min(to) };
            if start <= end && start <= to {
                diff[(start - from) as usize] += i128::from(bytes);
                diff[(end - from) as usize + 1] -= i128::from(bytes);
            }
        };
        for (k, s) in self.storages.iter().enumerate() {
            if s.dynamic {
                add(s.born, s.last_use, keep[k] || pinned[k], s.bytes + sm);
            }
        }
        if nm > 0 {
            for n in self.nodes.iter().filter(|n| n.born > 0) {
                add(n.born, n.last_use, keep[n.storage] || pinned[n.storage], nm);
            }
        }
        let (mut live, mut best) = (0i128, 0i128);
        for d in &diff[..len - 1] {
            live += d;
            best = best.max(live);
        }
        best as u64
    }
}

/// A reference-counted object graph of tensors, as candle holds them: each node owns a
/// reference to its storage (views share one) and, when tracked, to each op input.
struct Arena {
    /// (storage, tracked, inputs, references)
    nodes: Vec<ANode>,
    /// (bytes, references)
    storages: Vec<(u64, u32)>,
    live: u64,
    /// Bytes of parameter-gradient storages held by the store.
    pg: u64,
    peak: Moment,
    /// Forward-graph storages alive.
    graph: u64,
    graph_storages: usize,
    node_meta: u64,
    storage_meta: u64,
}

struct ANode {
    storage: usize,
    /// Its metadata is counted in `live`.
    meta: bool,
    tracked: bool,
    inputs: Vec<usize>,
    rc: u32,
}

impl Arena {
    fn note(&mut self) {
        if self.live > self.peak.total() {
            let graph = self.graph.min(self.live);
            let pg = self.pg.min(self.live - graph);
            self.peak = Moment {
                param_grads: pg,
                graph,
                other: self.live - pg - graph,
            };
        }
    }
    fn new_storage(&mut self, bytes: u64) -> usize {
        self.storages.push((bytes, 0));
        self.live += bytes + self.storage_meta;
        self.note();
        self.storages.len() - 1
    }
    fn push(&mut self, storage: usize, inputs: &[usize]) -> usize {
        let tracked = inputs.iter().any(|&i| self.nodes[i].tracked);
        self.storages[storage].1 += 1;
        self.live += self.node_meta;
        self.note();
        if tracked {
            for &i in inputs {
                self.nodes[i].rc += 1;
            }
        }
        self.nodes.push(ANode {
            storage,
            meta: true,
            tracked,
            inputs: if tracked { inputs.to_vec() } else { Vec::new() },
            rc: 1,
        });
        self.nodes.len() - 1
    }
    /// An op allocating `bytes`; the result is held by one handle.
    fn op(&mut self, inputs: &[usize], bytes: u64) -> usize {
        let s = self.new_storage(bytes);
        self.push(s, inputs)
    }
    /// A view of `x` (shares its storage).
    fn view(&mut self, x: usize) -> usize {
        let s = self.nodes[x].storage;
        self.push(s, &[x])
    }
    /// `detach()`: same storage, no op.
    fn detach(&mut self, x: usize) -> usize {
        let s = self.nodes[x].storage;
        self.push(s, &[])
    }
    /// A fresh untracked tensor (`zeros_like`, `ones_like`).
    fn fresh(&mut self, bytes: u64) -> usize {
        self.op(&[], bytes)
    }
    fn drop_(&mut self, x: usize) {
        let mut stack = vec![x];
        while let Some(n) = stack.pop() {
            let node = &mut self.nodes[n];
            node.rc -= 1;
            if node.rc > 0 {
                continue;
            }
            let s = node.storage;
            let inputs = std::mem::take(&mut node.inputs);
            if node.meta {
                self.live -= self.node_meta;
            }
            let counted = s >= self.graph_storages || self.storages[s].0 > 0;
            let st = &mut self.storages[s];
            st.1 -= 1;
            if st.1 == 0 && counted {
                self.live -= st.0 + self.storage_meta;
                if s < self.graph_storages {
                    self.graph -= st.0;
                }
            }
            stack.extend(inputs);
        }
    }
}

/// The gradient store: node → handle (one reference held).
struct Store {
    map: HashMap<usize, usize>,
}

struct Sim<'a> {
    t: &'a Tape,
    a: Arena,
    store: Store,
}

impl Sim<'_> {
    fn bytes(&self, n: usize) -> u64 {
        self.t.bytes(n)
    }
    fn is_param(&self, n: usize) -> bool {
        n < self.t.nodes.len() && self.t.nodes[n].var
    }
    fn set(&mut self, n: usize, h: usize) -> Option<usize> {
        let old = self.store.map.insert(n, h);
        if self.is_param(n) {
            // parameter gradients are counted apart (their storage is fresh: a sum)
            let b = self.a.storages[self.a.nodes[h].storage].0;
            self.a.pg += b;
            if let Some(o) = old {
                self.a.pg -= self.a.storages[self.a.nodes[o].storage].0;
            }
        }
        old
    }
    /// `let s = grads.or_insert(n)?; *s = s.add(x)?` (or `sub`, `index_add`,
    /// `scatter_add`: one new tensor from the old sum and `extra` inputs).
    fn acc(&mut self, n: usize, extra: &[usize]) {
        if !self.store.map.contains_key(&n) {
            let z = self.a.fresh(self.bytes(n));
            self.set(n, z);
        }
        let old = self.store.map[&n];
        let mut inputs = vec![old];
        inputs.extend_from_slice(extra);
        let new = self.a.op(&inputs, self.bytes(n));
        self.set(n, new);
        self.a.drop_(old);
    }
    /// `grads.or_insert(n)` alone.
    fn or_insert(&mut self, n: usize) {
        if !self.store.map.contains_key(&n) {
            let z = self.a.fresh(self.bytes(n));
            self.set(n, z);
        }
    }
}

impl Tape {
    /// Replay `loss.backward()`, then drop the graph and replay `AdamW::step`:
    /// (backward peak, optimizer peak, parameter-gradient bytes).
    fn simulate(&self, loss: usize, logits: usize) -> (Moment, Moment, u64) {
        // forward nodes alive at the end of the loss: those reachable from it
        let reach = self.reachable_nodes(&[loss, logits]);
        let mut sim = Sim {
            t: self,
            a: self.arena_after_loss(&reach, loss, logits),
            store: Store {
                map: HashMap::new(),
            },
        };
        sim.backward(loss);
        let bwd = sim.a.peak;
        // the caller drops the loss and the logits; the store may still hold parts of
        // the graph through the ops of the gradients it keeps
        sim.a.drop_(loss);
        sim.a.drop_(logits);
        let opt = self.optimizer_moment(&sim.a);
        let pg = sim.a.pg;
        (bwd, opt, pg)
    }

    /// Nodes reachable from `roots` through the ops' inputs.
    fn reachable_nodes(&self, roots: &[usize]) -> Vec<bool> {
        let mut reach = vec![false; self.nodes.len()];
        let mut stack = roots.to_vec();
        while let Some(x) = stack.pop() {
            if reach[x] {
                continue;
            }
            reach[x] = true;
            if let Some(op) = &self.nodes[x].op {
                stack.extend(op.args());
            }
        }
        reach
    }

    /// The object graph as the forward and the loss leave it: every reachable node
    /// (`reach`) holds its storage and, when tracked, its op inputs; parameters and
    /// inputs are held by their owners; the caller holds `loss` and `logits`. Live bytes
    /// start as the dynamic storages still referenced (plus host metadata).
    fn arena_after_loss(&self, reach: &[bool], loss: usize, logits: usize) -> Arena {
        let n = self.nodes.len();
        let mut a = Arena {
            nodes: Vec::with_capacity(n * 4),
            storages: self
                .storages
                .iter()
                .map(|s| (if s.dynamic { s.bytes } else { 0 }, 0))
                .collect(),
            live: 0,
            pg: 0,
            peak: Moment::default(),
            graph: 0,
            graph_storages: self.storages.len(),
            node_meta: if self.meta { CPU_NODE_META } else { 0 },
            storage_meta: if self.meta { CPU_STORAGE_META } else { 0 },
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let leaf = node.op.is_none() && !self.storages[node.storage].dynamic;
            let alive = reach[i] || leaf;
            let tracked = node.var || node.op.is_some();
            a.nodes.push(ANode {
                storage: node.storage,
                meta: reach[i] && self.storages[node.storage].dynamic,
                tracked,
                inputs: if alive && tracked {
                    node.op.as_ref().map(|o| o.args()).unwrap_or_default()
                } else {
                    Vec::new()
                },
                // parameters and inputs are held by their owners
                rc: u32::from(leaf),
            });
            if alive {
                a.storages[node.storage].1 += 1;
            }
        }
        for i in 0..n {
            for k in 0..a.nodes[i].inputs.len() {
                let x = a.nodes[i].inputs[k];
                a.nodes[x].rc += 1;
            }
        }
        a.nodes[loss].rc += 1;
        a.nodes[logits].rc += 1;
        let nm = a.node_meta;
        let sm = a.storage_meta;
        a.live = a
            .storages
            .iter()
            .filter(|s| s.1 > 0 && s.0 > 0)
            .map(|s| s.0 + sm)
            .sum::<u64>()
            + nm * (0..n)
                .filter(|&i| reach[i] && self.storages[self.nodes[i].storage].dynamic)
                .count() as u64;
        a.graph = a.live;
        a.peak = Moment {
            graph: a.graph,
            ..Moment::default()
        };
        a
    }

    /// The moment of `AdamW::step`, after backward with `a` as the graph is dropped.
    fn optimizer_moment(&self, a: &Arena) -> Moment {
        let held = a.live;
        // AdamW::step: per variable (m, v, θ are variables, so every intermediate is
        // tracked and kept by the next one): t1, t2, m', w, u, v', m̂, v̂, θ', √v̂,
        // √v̂+ε, m̂/(√v̂+ε), ·lr, θ'' = 14 tensors (g² is freed at once).
        let max_var = self
            .params
            .iter()
            .filter(|p| p.2)
            .map(|p| p.1)
            .max()
            .unwrap_or(0);
        let opt = Moment {
            param_grads: a.pg.min(held),
            graph: a.graph.min(held - a.pg.min(held)),
            other: 0,
        };
        Moment {
            other: held - opt.param_grads - opt.graph + 14 * max_var,
            ..opt
        }
    }
}

impl Sim<'_> {
    /// `loss.backward()`: seed the loss gradient, then run each node's backward in
    /// candle's topological order, freeing its gradient once propagated.
    fn backward(&mut self, loss: usize) {
        let t = self.t;
        // grads.insert(loss, loss.ones_like()?.contiguous()?)
        let ones = self.a.fresh(t.bytes(loss));
        self.set(loss, ones);
        for x in sorted_nodes(t, loss) {
            let node = &t.nodes[x];
            if node.var {
                continue;
            }
            let g0 = self
                .store
                .map
                .remove(&x)
                .expect("gradient populated in order");
            if t.nodes[x].var {
                self.a.pg -= self.a.storages[self.a.nodes[g0].storage].0;
            }
            let g = self.a.detach(g0);
            let g_owned = self.node_backward(x, g);
            if g_owned {
                self.a.drop_(g);
            }
            self.a.drop_(g0);
        }
    }

    /// `acc(n, [t])`, then release `t`.
    fn acc_drop(&mut self, n: usize, t: usize) {
        self.acc(n, &[t]);
        self.a.drop_(t);
    }

    /// One node's backward formula (candle's `backprop.rs`, per op) with its gradient
    /// `g`; returns whether `g` is still held (a formula may consume it).
    fn node_backward(&mut self, x: usize, g: usize) -> bool {
        let t = self.t;
        match t.nodes[x].op.as_ref().expect("sorted nodes have ops") {
            SOp::Binary(l, r, op) => self.binary_backward(x, (*l, *r), *op, g),
            SOp::Broadcast(arg) => {
                let s = self.a.op(&[g], t.bytes(*arg));
                let v = self.a.view(s);
                self.acc_drop(*arg, v);
                self.a.drop_(s);
            }
            SOp::Sum(arg) | SOp::Reshape(arg) | SOp::Transpose(arg) => {
                let v = self.a.view(g);
                self.acc_drop(*arg, v);
            }
            SOp::Copy(arg) => self.acc(*arg, &[g]),
            SOp::Max(arg) => self.max_backward(x, *arg, g),
            SOp::Affine(arg) => {
                let ag = self.a.op(&[g], t.bytes(*arg));
                self.acc_drop(*arg, ag);
            }
            SOp::Unary(arg, u) => return self.unary_backward(x, *arg, *u, g),
            SOp::Narrow(arg, dim, start, len) => self.narrow_backward(*arg, *dim, *start, *len, g),
            SOp::Cat(args) => {
                for &arg in args {
                    let v = self.a.view(g);
                    self.acc_drop(arg, v);
                }
            }
            SOp::IndexSelect(w, ids) => self.acc(*w, &[*ids, g]),
            SOp::Gather(xx, ids) => self.acc(*xx, &[*ids, g]),
            SOp::Matmul(l, r) => {
                let rt = self.a.view(*r);
                let lg = self.a.op(&[g, rt], t.bytes(*l));
                self.a.drop_(rt);
                self.acc(*l, &[lg]);
                let lt = self.a.view(*l);
                let rg = self.a.op(&[lt, g], t.bytes(*r));
                self.a.drop_(lt);
                self.acc_drop(*r, rg);
                self.a.drop_(lg);
            }
        }
        true
    }

    /// Backward of `l op r` (output node `x`): add/sub pass `g` to both sides; mul and
    /// div allocate each side's product first.
    fn binary_backward(&mut self, x: usize, (l, r): (usize, usize), op: Bin, g: usize) {
        let nb = self.bytes(x);
        match op {
            Bin::Add | Bin::Sub => {
                self.acc(l, &[g]);
                self.acc(r, &[g]);
            }
            Bin::Mul => {
                let lg = self.a.op(&[g, r], nb);
                self.acc(l, &[lg]);
                let rg = self.a.op(&[g, l], nb);
                self.acc_drop(r, rg);
                self.a.drop_(lg);
            }
            Bin::Div => {
                let lg = self.a.op(&[g, r], nb);
                self.acc(l, &[lg]);
                let t1 = self.a.op(&[g, l], nb);
                let t2 = self.a.op(&[r], nb);
                let rg = self.a.op(&[t1, t2], nb);
                self.a.drop_(t2);
                self.a.drop_(t1);
                self.acc_drop(r, rg);
                self.a.drop_(lg);
            }
        }
    }

    /// Backward of `max_keepdim` (node `x` over `arg`): the mask of the maxima
    /// (`eq`, u8), cast, times the broadcast gradient.
    fn max_backward(&mut self, x: usize, arg: usize, g: usize) {
        let ab = self.bytes(arg);
        let nv = self.a.view(x);
        let gv = self.a.view(g);
        let eq = self.a.op(&[nv], ab / self.t.esize);
        let td = self.a.op(&[eq], ab);
        let m = self.a.op(&[td, gv], ab);
        self.a.drop_(td);
        self.a.drop_(eq);
        let mv = self.a.view(m);
        self.acc_drop(arg, mv);
        self.a.drop_(m);
        self.a.drop_(gv);
        self.a.drop_(nv);
    }

    /// Backward of a unary op (node `x` over `arg`), temporaries in candle's source
    /// order; returns whether `g` is still held (`log` consumes it).
    fn unary_backward(&mut self, x: usize, arg: usize, u: Un, g: usize) -> bool {
        let ab = self.bytes(arg);
        match u {
            Un::Exp => {
                self.or_insert(arg);
                let t = self.a.op(&[g, x], ab);
                self.acc_drop(arg, t);
            }
            Un::Log => {
                self.or_insert(arg);
                // `grad / arg` consumes the local gradient
                let t = self.a.op(&[g, arg], ab);
                self.a.drop_(g);
                self.acc_drop(arg, t);
                return false;
            }
            // sqr: (arg · g) · 2; sqrt: (g / x) · 0.5
            Un::Sqr => self.two_step_grad(arg, [arg, g], ab),
            Un::Sqrt => self.two_step_grad(arg, [g, x], ab),
            Un::Neg => self.acc(arg, &[g]),
            Un::Silu => self.silu_backward(x, arg, g),
            Un::Gelu => self.gelu_backward(arg, g),
        }
        true
    }

    /// A gradient made of one binary product of `ins` then one scalar op, accumulated
    /// into `arg`.
    fn two_step_grad(&mut self, arg: usize, ins: [usize; 2], ab: u64) {
        let t1 = self.a.op(&ins, ab);
        let ag = self.a.op(&[t1], ab);
        self.a.drop_(t1);
        self.acc_drop(arg, ag);
    }

    /// candle's silu backward: σ(arg) = 1/(1 + exp(−arg)), then
    /// g · (σ + x · (1 − σ)).
    fn silu_backward(&mut self, x: usize, arg: usize, g: usize) {
        let ab = self.bytes(arg);
        self.or_insert(arg);
        let n1 = self.a.op(&[arg], ab);
        let e = self.a.op(&[n1], ab);
        let p1 = self.a.op(&[e], ab);
        self.a.drop_(e);
        let sig = self.a.op(&[p1], ab);
        self.a.drop_(p1);
        self.a.drop_(n1);
        let b = self.a.op(&[x], ab);
        let c = self.a.op(&[sig, b], ab);
        self.a.drop_(b);
        let sg = self.a.op(&[c, x], ab);
        self.a.drop_(c);
        let t = self.a.op(&[g, sg], ab);
        self.a.drop_(sg);
        self.acc_drop(arg, t);
        self.a.drop_(sig);
    }

    /// candle's gelu (tanh approximation) backward, temporaries in source order.
    fn gelu_backward(&mut self, arg: usize, g: usize) {
        let ab = self.bytes(arg);
        self.or_insert(arg);
        let cube = self.a.op(&[arg], ab);
        let a1 = self.a.op(&[cube], ab);
        let a2 = self.a.op(&[arg], ab);
        let a3 = self.a.op(&[a1, a2], ab);
        self.a.drop_(a1);
        self.a.drop_(a2);
        let th = self.a.op(&[a3], ab);
        self.a.drop_(a3);
        let b1 = self.a.op(&[th], ab);
        let c1 = self.a.op(&[cube], ab);
        self.a.drop_(cube);
        let c2 = self.a.op(&[arg], ab);
        let c3 = self.a.op(&[c1, c2], ab);
        self.a.drop_(c1);
        self.a.drop_(c2);
        let p = self.a.op(&[th], ab);
        let q = self.a.op(&[p], ab);
        self.a.drop_(p);
        let r = self.a.op(&[c3, q], ab);
        self.a.drop_(c3);
        self.a.drop_(q);
        let s2 = self.a.op(&[b1, r], ab);
        self.a.drop_(b1);
        self.a.drop_(r);
        let gg = self.a.op(&[s2], ab);
        self.a.drop_(s2);
        let t = self.a.op(&[g, gg], ab);
        self.a.drop_(gg);
        self.acc_drop(arg, t);
        self.a.drop_(th);
    }

    /// Backward of `narrow`: the gradient padded with zeros on either side (one
    /// `cat` of the pieces), or passed through when nothing was cut.
    fn narrow_backward(&mut self, arg: usize, dim: usize, start: usize, len: usize, g: usize) {
        let t = self.t;
        let ad = &t.nodes[arg].dims;
        let row = elems(ad) / ad[dim] as u64 * t.esize;
        let right = ad[dim] - start - len;
        let l = (start > 0).then(|| self.a.fresh(row * start as u64));
        let r = (right > 0).then(|| self.a.fresh(row * right as u64));
        if l.is_none() && r.is_none() {
            self.acc(arg, &[g]);
        } else {
            let mut ins: Vec<usize> = l.iter().copied().collect();
            ins.push(g);
            ins.extend(r.iter().copied());
            let c = self.a.op(&ins, t.bytes(arg));
            if let Some(l) = l {
                self.a.drop_(l);
            }
            if let Some(r) = r {
                self.a.drop_(r);
            }
            self.acc_drop(arg, c);
        }
    }
}

/// Simulate one candle training step (forward → loss → backward → AdamW) of `spec`
/// with `batch × seq` tokens, parameters and activations of `esize` bytes.
pub fn candle_step(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    method: ProbeMethod,
    esize: u64,
    host_meta: bool,
) -> Result<CandleStep> {
    if batch == 0 || seq == 0 {
        return Err(Error::invalid("batch/seq", 0, "integers > 0"));
    }
    let mut t = Tape::new(esize, host_meta);
    let params = program::build_params(&mut t, spec, method)?;
    let inputs = program::build_inputs(&mut t, spec, batch, seq)?;
    let op0 = t.op;
    let logits = program::forward(&mut t, spec, &params, &inputs, batch, seq)?;
    let op_fwd = t.op;
    let loss = program::loss(&mut t, &logits, &inputs.targets)?;
    let op_loss = t.op;
    let keep = reachable_storages(&t, loss);
    let logits_st = t.nodes[logits].storage;
    let graph: u64 = t
        .storages
        .iter()
        .enumerate()
        .filter(|(k, s)| s.dynamic && keep[*k])
        .map(|(_, s)| s.bytes)
        .sum();
    // during forward only what the logits need stays; the caller holds the logits
    let keep_fwd = reachable_storages(&t, logits);
    let fwd = t.forward_peak(op0 + 1, op_fwd, &keep_fwd, &[]);
    let lss = t.forward_peak(op_fwd + 1, op_loss, &keep, &[logits_st]);
    let (bwd_peak, optimizer_peak, pg) = t.simulate(loss, logits);
    let weights: u64 = t.params.iter().map(|p| p.1).sum();
    let trainable: Vec<u64> = t.params.iter().filter(|p| p.2).map(|p| p.1).collect();
    let optimizer_state = 2 * trainable.iter().sum::<u64>();
    let count = |b: u64| b / esize;
    Ok(CandleStep {
        weights,
        optimizer_state,
        param_grads: pg,
        graph,
        forward_peak: Moment {
            other: fwd,
            ..Moment::default()
        },
        loss_peak: Moment {
            other: lss,
            ..Moment::default()
        },
        backward_peak: bwd_peak,
        optimizer_peak,
        params_total: count(weights),
        params_trainable: count(trainable.iter().sum()),
    })
}

/// The probe method, element size and host-metadata flag of a candle workload.
pub fn workload_method(w: &crate::workload::Workload) -> Result<(ProbeMethod, u64)> {
    use crate::workload::{GradCkpt, Loss, Method, Optimizer, Precision};
    let method = match &w.method {
        Method::Full => ProbeMethod::Full,
        Method::Lora(l) if l.targets == crate::arch::LoraTargets::AllLinear => ProbeMethod::Lora {
            rank: l.rank as usize,
            alpha: l.alpha,
        },
        Method::Lora(l) => {
            return Err(Error::invalid(
                "--lora-targets with --runtime candle",
                &l.targets,
                "all-linear (the candle probe models adapt every decoder linear)",
            ))
        }
        m => {
            return Err(Error::invalid(
                "--method with --runtime candle",
                m,
                "full or lora",
            ))
        }
    };
    let esize = match w.precision {
        Precision::Fp32 => 4,
        Precision::Bf16 | Precision::Fp16 => 2,
        p => {
            return Err(Error::invalid(
                "--dtype with --runtime candle",
                p,
                "fp32, bf16 or fp16 (candle has no autocast)",
            ))
        }
    };
    if !matches!(w.optimizer, Optimizer::AdamW | Optimizer::AdamWForeach) {
        return Err(Error::invalid(
            "--optimizer with --runtime candle",
            w.optimizer,
            "adamw (candle-nn AdamW)",
        ));
    }
    if w.grad_accum != 1
        || w.master_weights
        || w.loss != Loss::Standard
        || w.grad_ckpt != GradCkpt::None
    {
        return Err(Error::invalid(
            "training options with --runtime candle",
            format!(
                "grad-accum {}, master-weights {}, loss {}, grad-ckpt {}",
                w.grad_accum, w.master_weights, w.loss, w.grad_ckpt
            ),
            "grad-accum 1, no master weights, standard loss, no checkpointing",
        ));
    }
    Ok((method, esize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(family: &str) -> ModelSpec {
        let mut s = crate::hf::presets::get(family).expect("preset").unwrap();
        s.hidden = 64;
        s.heads = 4;
        s.kv_heads = if s.kv_heads < s.heads { 2 } else { 4 };
        s.head_dim = 16;
        s.intermediate = 128;
        s.vocab = 256;
        s.set_layers(2);
        s.max_positions = 64;
        if let crate::arch::Positions::Rope { .. } = s.positions {
            s.positions = crate::arch::Positions::Rope { rotary_dim: 16 };
        }
        s
    }

    #[test]
    fn simulates_every_family() {
        for f in [
            "llama-3.2-1b",
            "gpt2",
            "pythia-70m",
            "phi-3-mini-4k-instruct",
            "gemma-2b",
            "qwen3-0.6b",
        ] {
            let spec = tiny(f);
            let st = candle_step(&spec, 2, 8, ProbeMethod::Full, 4, false).unwrap();
            assert!(st.backward_peak.total() > st.graph, "{f}");
            assert!(
                st.param_grads == st.weights,
                "{f}: every parameter gets a gradient"
            );
            assert_eq!(st.optimizer_state, 2 * st.weights);
        }
    }
}
