//! Gathers between the vocabulary and the token level, rewritten into work
//! the loops fuse (see [`fuse_gathers`]).

use keel_check::builtins::Level;
use keel_ir::ir::{Bin, DType, Graph, Node, NodeId, Op};
use std::collections::HashMap;

/// The input that numbers each vocabulary entry.
pub(super) const VOCAB_INDEX: &str = "vocab_index";

/// Rewrite the gathers between the vocabulary and the token level into work
/// the loops fuse:
/// - `onehot(g)` becomes `where(vocab_index == tokens, g, 0)`, elementwise
///   in the vocabulary loop that reads it (no [N, V] scatter in memory);
/// - `pick(f(x, …))` of an elementwise vocabulary value becomes
///   `f(pick(x), …)` at token level, down to the inputs (`pick(vocab_index)`
///   is `tokens`), so only an input or a special step's result is gathered
///   and the vocabulary value is not stored to be picked from.
///
/// Values are unchanged; node ids are renumbered in topological order.
pub fn fuse_gathers(g: &Graph) -> Graph {
    if !g
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Pick | Op::OneHot))
    {
        return g.clone();
    }
    let mut out = Graph {
        nodes: Vec::with_capacity(g.nodes.len()),
        outputs: Vec::new(),
    };
    let mut new_of: Vec<NodeId> = Vec::with_capacity(g.nodes.len());
    let mut picked: HashMap<NodeId, NodeId> = HashMap::new();
    let mut input_of: HashMap<String, NodeId> = HashMap::new();
    let push = |out: &mut Graph, op: Op, args: Vec<NodeId>, level: Level, dtype: DType, grad| {
        out.nodes.push(Node {
            op,
            args,
            level,
            dtype,
            grad,
        });
        out.nodes.len() - 1
    };
    // An input node, shared.
    let input = |out: &mut Graph, input_of: &mut HashMap<String, NodeId>, name: &str, level| {
        if let Some(&id) = input_of.get(name) {
            return id;
        }
        let id = push(
            out,
            Op::Input(name.to_string()),
            Vec::new(),
            level,
            DType::I64,
            false,
        );
        input_of.insert(name.to_string(), id);
        id
    };
    // The token-level value `pick(old)`, in the new graph.
    fn pick(
        g: &Graph,
        old: NodeId,
        out: &mut Graph,
        new_of: &[NodeId],
        picked: &mut HashMap<NodeId, NodeId>,
        tokens: &mut dyn FnMut(&mut Graph) -> NodeId,
    ) -> NodeId {
        if let Some(&id) = picked.get(&old) {
            return id;
        }
        let n = &g.nodes[old];
        let elementwise = matches!(
            n.op,
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Clamp | Op::StopGrad | Op::Broadcast
        );
        let id = if n.level < Level::Vocab {
            new_of[old]
        } else if matches!(&n.op, Op::Input(name) if name == VOCAB_INDEX) {
            tokens(out)
        } else if let Op::Const(c) = n.op {
            out.nodes.push(Node {
                op: Op::Const(c),
                args: Vec::new(),
                level: Level::Token,
                dtype: n.dtype,
                grad: false,
            });
            out.nodes.len() - 1
        } else if elementwise && !matches!(n.op, Op::Broadcast) {
            let args = n
                .args
                .iter()
                .map(|&a| pick(g, a, out, new_of, picked, tokens))
                .collect();
            out.nodes.push(Node {
                op: n.op.clone(),
                args,
                level: Level::Token,
                dtype: n.dtype,
                grad: n.grad,
            });
            out.nodes.len() - 1
        } else if matches!(n.op, Op::Broadcast) {
            pick(g, n.args[0], out, new_of, picked, tokens)
        } else {
            out.nodes.push(Node {
                op: Op::Pick,
                args: vec![new_of[old]],
                level: Level::Token,
                dtype: n.dtype,
                grad: n.grad,
            });
            out.nodes.len() - 1
        };
        picked.insert(old, id);
        id
    }
    for n in &g.nodes {
        let id = match n.op {
            Op::Pick if n.args.len() == 1 => {
                let mut tokens =
                    |out: &mut Graph| input(out, &mut input_of, "tokens", Level::Token);
                let id = pick(g, n.args[0], &mut out, &new_of, &mut picked, &mut tokens);
                // A value of a coarser level (a picked broadcast): back to
                // the token level.
                if out.nodes[id].level < Level::Token {
                    push(
                        &mut out,
                        Op::Broadcast,
                        vec![id],
                        Level::Token,
                        n.dtype,
                        n.grad,
                    )
                } else {
                    id
                }
            }
            Op::OneHot if n.args.len() == 1 => {
                let vi = input(&mut out, &mut input_of, VOCAB_INDEX, Level::Vocab);
                let tok = input(&mut out, &mut input_of, "tokens", Level::Token);
                let hit = push(
                    &mut out,
                    Op::Binary(Bin::Eq),
                    vec![vi, tok],
                    Level::Vocab,
                    DType::Bool,
                    false,
                );
                let zero = push(
                    &mut out,
                    Op::Const(0.0),
                    Vec::new(),
                    Level::Step,
                    DType::F64,
                    false,
                );
                push(
                    &mut out,
                    Op::Where,
                    vec![hit, new_of[n.args[0]], zero],
                    Level::Vocab,
                    n.dtype,
                    n.grad,
                )
            }
            _ => {
                let args = n.args.iter().map(|&a| new_of[a]).collect();
                if let Op::Input(name) = &n.op
                    && let Some(&id) = input_of.get(name)
                {
                    id
                } else {
                    let id = push(&mut out, n.op.clone(), args, n.level, n.dtype, n.grad);
                    if let Op::Input(name) = &n.op {
                        input_of.insert(name.clone(), id);
                    }
                    id
                }
            }
        };
        new_of.push(id);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, id)| (name.clone(), new_of[*id]))
        .collect();
    out
}
