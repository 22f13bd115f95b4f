//! One PyTorch expression per IR node.
//!
//! Every node the loss, the advantages or a metric depends on becomes one
//! line `vN = EXPR` of `forward`, in the graph's order (arguments come
//! first). Pointwise ops are torch's own functions where they mean exactly
//! what `keel_ir::ops` says, and `_keel.py` functions where they do not
//! (Rust's `round` is half away from zero; `min`/`max` give a tie and its
//! gradient to the first argument). Level-changing ops (broadcast,
//! reductions, ranks, quantiles, sorted and keyed statistics, scans, picks,
//! `rand`) are `_keel.py` functions with the interpreter's semantics. The
//! gradient nodes Keel derives are not exported: torch autograd derives the
//! same gradient from the forward expressions, and the tests check that.

use keel_check::builtins::Level;
use keel_ir::ir::{Bin, Graph, NodeId, Op, Red, ScanOp, Un};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The outputs a module returns: the loss, the advantages and the metrics.
fn exported(name: &str) -> bool {
    name == "loss"
        || name == "advantages"
        || name.starts_with("metric.")
        || name.starts_with("term.")
}

fn level(l: Level) -> &'static str {
    match l {
        Level::Step => "K.STEP",
        Level::Batch => "K.BATCH",
        Level::Group => "K.GROUP",
        Level::Seq => "K.SEQ",
        Level::Token => "K.TOKEN",
        Level::Vocab => "K.VOCAB",
    }
}

/// A Python float literal.
fn float(x: f64) -> String {
    if x.is_nan() {
        "float(\"nan\")".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "float(\"inf\")".into()
        } else {
            "-float(\"inf\")".into()
        }
    } else {
        // Rust's shortest round-trip form is a valid Python literal.
        format!("{x:?}")
    }
}

/// A Python string literal (JSON's escapes are Python's).
fn string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn red(r: Red) -> &'static str {
    match r {
        Red::Sum => "\"sum\"",
        Red::Max => "\"max\"",
        Red::Min => "\"min\"",
    }
}

/// Which outputs a module returns: all it exports, or one of them.
#[derive(Clone, Copy)]
pub enum Keep<'a> {
    All,
    Only(&'a str),
    /// The outputs whose names start with this.
    Prefix(&'a str),
}

impl Keep<'_> {
    fn keeps(self, name: &str) -> bool {
        match self {
            Keep::All => exported(name),
            Keep::Only(n) => n == name,
            Keep::Prefix(p) => name.starts_with(p),
        }
    }
}

/// Which nodes the exported outputs depend on.
fn needed(g: &Graph, keep: Keep) -> Vec<bool> {
    g.live_from(
        g.outputs
            .iter()
            .filter(|(n, _)| keep.keeps(n))
            .map(|(_, id)| *id),
    )
}

/// The hyperparameters the exported outputs read, with their values.
pub fn params(g: &Graph, keep: Keep) -> BTreeMap<String, f64> {
    let live = needed(g, keep);
    g.nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| live[*i])
        .filter_map(|(_, n)| match &n.op {
            Op::Param { name, value } => Some((name.clone(), *value)),
            _ => None,
        })
        .collect()
}

/// The batch inputs the exported outputs read (and `tokens` for a pick).
pub fn inputs(g: &Graph, keep: Keep) -> Vec<String> {
    inputs_of(g, &needed(g, keep))
}

/// The batch inputs the nodes marked `live` read (and `tokens` for a pick).
pub fn inputs_of(g: &Graph, live: &[bool]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        match &n.op {
            Op::Input(s) => v.push(s.clone()),
            Op::Pick | Op::OneHot => v.push("tokens".into()),
            _ => {}
        }
    }
    if g.uses_groups_in(live) {
        v.push("group".into());
    }
    v.push("mask".into());
    v.sort();
    v.dedup();
    v
}

/// The expression of node `id`.
fn expr(g: &Graph, id: NodeId) -> String {
    let n = &g.nodes[id];
    let a = |k: usize| format!("v{}", n.args.get(k).copied().unwrap_or(0));
    let lv = |k: usize| level(g.nodes[n.args.get(k).copied().unwrap_or(0)].level);
    let here = level(n.level);
    match &n.op {
        Op::Const(c) => format!("K.full(S, {}, {here})", float(*c)),
        Op::Param { name, .. } => format!("K.full(S, P[{}], {here})", string(name)),
        Op::Input(name) => format!("K.read(S, inp, {}, {here})", string(name)),
        Op::PaddedLength => format!("K.full(S, S.t, {here})"),
        Op::Unary(u) => {
            let f = match u {
                Un::Neg => return format!("(-{})", a(0)),
                Un::Exp => "torch.exp",
                Un::Log => "torch.log",
                Un::Log1p => "torch.log1p",
                Un::Expm1 => "torch.expm1",
                Un::Sqrt => "torch.sqrt",
                Un::Abs => "torch.abs",
                Un::Sign => "K.sign",
                Un::Sigmoid => "K.sigmoid",
                Un::Softplus => "K.softplus",
                Un::Tanh => "torch.tanh",
                Un::Relu => "torch.relu",
                Un::Cos => "torch.cos",
                Un::Sin => "torch.sin",
                Un::Floor => "torch.floor",
                Un::Ceil => "torch.ceil",
                Un::Round => "K.round_",
                Un::Not => "K.not_",
            };
            format!("{f}({})", a(0))
        }
        Op::Binary(b) => {
            let (x, y) = (a(0), a(1));
            match b {
                Bin::Add => format!("({x} + {y})"),
                Bin::Sub => format!("({x} - {y})"),
                Bin::Mul => format!("({x} * {y})"),
                Bin::Div => format!("({x} / {y})"),
                Bin::Pow => format!("torch.pow({x}, {y})"),
                Bin::Min => format!("K.minimum({x}, {y})"),
                Bin::Max => format!("K.maximum({x}, {y})"),
                Bin::Lt => format!("K.cmp({x} < {y}, {x})"),
                Bin::Le => format!("K.cmp({x} <= {y}, {x})"),
                Bin::Gt => format!("K.cmp({x} > {y}, {x})"),
                Bin::Ge => format!("K.cmp({x} >= {y}, {x})"),
                Bin::Eq => format!("K.cmp({x} == {y}, {x})"),
                Bin::Ne => format!("K.cmp({x} != {y}, {x})"),
                Bin::And => format!("K.cmp(({x} != 0) & ({y} != 0), {x})"),
                Bin::Or => format!("K.cmp(({x} != 0) | ({y} != 0), {x})"),
            }
        }
        Op::Where => format!("K.where({}, {}, {})", a(0), a(1), a(2)),
        Op::Clamp => format!("K.clamp({}, {}, {})", a(0), a(1), a(2)),
        Op::StopGrad => format!("{}.detach()", a(0)),
        Op::Broadcast => format!("K.bc(S, {}, {}, {here})", a(0), lv(0)),
        Op::Reduce(r) => format!("K.reduce(S, {}, {}, {}, {here})", a(0), red(*r), lv(0)),
        Op::Rank { over } => format!("K.rank(S, {}, {here}, {})", a(0), level(*over)),
        Op::Quantile { over } => format!(
            "K.quantile(S, {}, {}, {}, {}, {})",
            a(0),
            a(1),
            lv(0),
            lv(1),
            level(*over)
        ),
        Op::SortedCumsum { over, reverse } => format!(
            "K.sorted_cumsum(S, {}, {}, {here}, {}, {})",
            a(0),
            a(1),
            level(*over),
            if *reverse { "True" } else { "False" }
        ),
        Op::Keyed(r) => format!(
            "K.keyed(S, {}, {}, {}, {}, {here})",
            a(0),
            a(1),
            a(2),
            red(*r)
        ),
        Op::KeyedQuantile => format!(
            "K.keyed_quantile(S, {}, {}, {}, {}, {here})",
            a(0),
            a(1),
            a(2),
            a(3)
        ),
        Op::Scan(s) => {
            let tok = |k: usize| format!("K.bc(S, {}, {}, K.TOKEN)", a(k), lv(k));
            match s {
                ScanOp::RScan => format!("K.rscan(S, {}, {})", a(0), tok(1)),
                ScanOp::FScan => format!("K.fscan(S, {}, {})", a(0), tok(1)),
                ScanOp::RScanMin => format!("K.rscan_min(S, {})", a(0)),
                ScanOp::Next => format!("K.next_(S, {}, {})", a(0), tok(1)),
                ScanOp::Prev => format!("K.prev(S, {}, {})", a(0), tok(1)),
                ScanOp::Latest => format!("K.latest(S, {}, {}, {})", a(0), a(1), tok(2)),
            }
        }
        Op::Pick => format!("K.pick(S, inp, {})", a(0)),
        Op::OneHot => format!("K.one_hot(S, inp, {})", a(0)),
        Op::Rand => format!("K.rand(S, {}, {here})", a(0)),
    }
}

/// The text of `loss.py`: the recipe's hyperparameters and inputs, and
/// `forward(inp, params=None, dtype=None)`.
pub fn forward_source(g: &Graph, recipe: &str, source: &str, keep: Keep) -> String {
    let live = needed(g, keep);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\"\"\"The loss of Keel recipe `{recipe}` ({source}), one line per IR node.\n\nWritten by `keel export`; do not edit: export the recipe again.\n`forward(inp)` takes the batch as a dict of tensors by Keel's input names\n(docs/batch-format.md) and returns the loss, the advantages and the\nmetrics; differentiate the loss with torch autograd.\n\"\"\"\n\nimport torch\n\nfrom . import _keel as K\n"
    );
    let _ = writeln!(s, "RECIPE = {}", string(recipe));
    let _ = writeln!(s, "PARAMS = {{");
    for (k, v) in params(g, keep) {
        let _ = writeln!(s, "    {}: {},", string(&k), float(v));
    }
    let _ = writeln!(s, "}}");
    let ins: Vec<String> = inputs(g, keep).iter().map(|n| string(n)).collect();
    let _ = writeln!(s, "INPUTS = [{}]", ins.join(", "));
    let outs: Vec<String> = g
        .outputs
        .iter()
        .filter(|(n, _)| keep.keeps(n))
        .map(|(n, _)| string(n))
        .collect();
    let _ = writeln!(s, "OUTPUTS = [{}]\n\n", outs.join(", "));
    let _ = writeln!(
        s,
        "def forward(inp, params=None, dtype=None):\n    \"\"\"{{name: value}} for OUTPUTS; `params` overrides PARAMS; the values are\n    computed in `dtype` (default: that of `logp`, else float64).\"\"\"\n    P = dict(PARAMS)\n    if params:\n        P.update(params)\n    if dtype is None:\n        lp = inp.get(\"logp\")\n        dtype = lp.dtype if torch.is_tensor(lp) and lp.is_floating_point() else torch.float64\n    S = K.Shape(inp, dtype)"
    );
    for (id, _) in g.nodes.iter().enumerate() {
        if live[id] {
            let _ = writeln!(s, "    v{id} = {}", expr(g, id));
        }
    }
    let _ = writeln!(s, "    return {{");
    for (n, id) in g.outputs.iter().filter(|(n, _)| keep.keeps(n)) {
        let _ = writeln!(s, "        {}: v{id},", string(n));
    }
    let _ = writeln!(s, "    }}");
    s
}

/// The package's README: what it reads, what it returns, how to call it.
pub fn readme(g: &Graph, recipe: &str, package: &str, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# `{package}`: the loss of Keel recipe `{recipe}`\n\nWritten by `keel export {source} --target torch`; export again instead of\nediting. The package imports only torch.\n\n```python\nimport torch\nfrom {package} import forward\n\nout = forward(batch)          # batch: dict of tensors by Keel's input names\nout[\"loss\"].backward()        # torch autograd: the gradient Keel derives\n```\n\n## Inputs\n\nShapes as in Keel's `docs/batch-format.md`: B sequences, T response\npositions, V vocabulary entries; `mask` [B, T] selects the tokens that count,\n`group` [B] marks responses to the same prompt. `position`, `index`,\n`length` and the step inputs (`step`, `total_steps`: 1; `epoch`,\n`progress`: 0) are derived when absent.\n"
    );
    for n in inputs(g, Keep::All) {
        let shown = match keel_check::builtins::input(&n).map(|i| i.level) {
            Some(Level::Vocab) => "[B, T, V]",
            Some(Level::Token) => "[B, T]",
            Some(Level::Seq) => "[B]",
            _ if n == "mask" || n == "tokens" => "[B, T]",
            _ if n == "group" => "[B]",
            _ => "[]",
        };
        let _ = writeln!(s, "- `{n}` {shown}");
    }
    let _ = writeln!(
        s,
        "\n## Hyperparameters\n\n`PARAMS`, the recipe's values (`--set` applied); `forward(batch, params={{...}})`\noverrides them.\n"
    );
    for (k, v) in params(g, Keep::All) {
        let _ = writeln!(s, "- `{k}` = {}", float(v));
    }
    let _ = writeln!(
        s,
        "\n## Outputs\n\n`loss` (a scalar), `advantages` [B, T] (the credit broadcast to tokens and\nmasked) when the recipe has a credit, and each `metric.NAME` of its `monitor`\nsection. A batch-level statistic is taken over the batch handed to\n`forward`: on one rank and one micro-batch, it is that micro-batch's."
    );
    s
}
