//! Reverse-mode differentiation on the IR.
//!
//! The derivative is itself IR, appended to the same graph, so a backend can
//! fuse the forward and backward passes. Conventions (those of torch):
//! - `stopgrad`, comparisons, `floor`/`ceil`/`round`/`sign`, ranks and
//!   random numbers pass no gradient;
//! - `where` sends the gradient to the chosen branch;
//! - `clamp(x, lo, hi)` passes it where `lo <= x <= hi` (bounds inclusive);
//! - elementwise `min`/`max` send it to the smaller/larger argument and split
//!   it evenly at a tie (torch.minimum/maximum);
//! - reductions `max`/`min` split it evenly among tied maxima;
//! - a masked reduction gives masked-out elements no gradient.
//!
//! Operations with no derivative here (`quantile`, `rscan_min`, a scan's
//! discount or fill, `pow` at a non-positive base) are rejected when a
//! gradient would have to flow through them.

use crate::builtins::Level;
use crate::ir::{Bin, Builder, DType, NodeId, Op, Red, ScanOp, Un};

/// Gradients of `loss` with respect to each node in `wrt` (None where no
/// gradient reaches it). Errors name the operation that cannot be
/// differentiated.
pub fn gradients(
    bld: &mut Builder,
    loss: NodeId,
    wrt: &[NodeId],
) -> Result<Vec<Option<NodeId>>, &'static str> {
    let n = bld.graph.nodes.len();
    let mut adj: Vec<Option<NodeId>> = vec![None; n];
    let seed_level = bld.level(loss);
    adj[loss] = Some(bld.add(Op::Const(1.0), Vec::new(), seed_level, DType::F64));
    for id in (0..=loss).rev() {
        let Some(g) = adj[id] else { continue };
        let node = bld.graph.nodes[id].clone();
        if !node.grad {
            continue;
        }
        let a = |k: usize| node.args[k];
        let push =
            |bld: &mut Builder, adj: &mut Vec<Option<NodeId>>, target: NodeId, contrib: NodeId| {
                if !bld.grad(target) {
                    return;
                }
                // A contribution computed at a finer level sums back.
                let tl = bld.level(target);
                let contrib = if bld.level(contrib) > tl {
                    bld.reduce(Red::Sum, contrib, tl)
                } else {
                    contrib
                };
                let contrib = bld.broadcast(contrib, tl);
                adj[target] = Some(match adj[target] {
                    None => contrib,
                    Some(prev) => bld.binary(Bin::Add, prev, contrib),
                });
            };
        let zero = bld.c(0.0);
        match node.op {
            Op::Const(_)
            | Op::Param { .. }
            | Op::Input(_)
            | Op::PaddedLength
            | Op::StopGrad
            | Op::Rank { .. }
            | Op::Rand => {}
            Op::Unary(u) => {
                let x = a(0);
                let d = match u {
                    Un::Neg => bld.unary(Un::Neg, g),
                    Un::Exp => bld.binary(Bin::Mul, g, id),
                    Un::Log => bld.binary(Bin::Div, g, x),
                    Un::Log1p => {
                        let one = bld.c(1.0);
                        let den = bld.binary(Bin::Add, one, x);
                        bld.binary(Bin::Div, g, den)
                    }
                    Un::Expm1 => {
                        let one = bld.c(1.0);
                        let e = bld.binary(Bin::Add, id, one);
                        bld.binary(Bin::Mul, g, e)
                    }
                    Un::Sqrt => {
                        let half = bld.c(0.5);
                        let t = bld.binary(Bin::Div, half, id);
                        bld.binary(Bin::Mul, g, t)
                    }
                    Un::Abs => {
                        let s = bld.unary(Un::Sign, x);
                        bld.binary(Bin::Mul, g, s)
                    }
                    Un::Sigmoid => {
                        let one = bld.c(1.0);
                        let om = bld.binary(Bin::Sub, one, id);
                        let t = bld.binary(Bin::Mul, id, om);
                        bld.binary(Bin::Mul, g, t)
                    }
                    Un::Softplus => {
                        let s = bld.unary(Un::Sigmoid, x);
                        bld.binary(Bin::Mul, g, s)
                    }
                    Un::Tanh => {
                        let one = bld.c(1.0);
                        let sq = bld.binary(Bin::Mul, id, id);
                        let t = bld.binary(Bin::Sub, one, sq);
                        bld.binary(Bin::Mul, g, t)
                    }
                    Un::Relu => {
                        let pos = bld.binary(Bin::Gt, x, zero);
                        bld.where_(pos, g, zero)
                    }
                    Un::Cos => {
                        let s = bld.unary(Un::Sin, x);
                        let t = bld.binary(Bin::Mul, g, s);
                        bld.unary(Un::Neg, t)
                    }
                    Un::Sin => {
                        let c = bld.unary(Un::Cos, x);
                        bld.binary(Bin::Mul, g, c)
                    }
                    Un::Floor | Un::Ceil | Un::Round | Un::Sign | Un::Not => continue,
                };
                push(bld, &mut adj, x, d);
            }
            Op::Binary(b) => {
                let (x, y) = (a(0), a(1));
                match b {
                    Bin::Add => {
                        push(bld, &mut adj, x, g);
                        push(bld, &mut adj, y, g);
                    }
                    Bin::Sub => {
                        push(bld, &mut adj, x, g);
                        let ng = bld.unary(Un::Neg, g);
                        push(bld, &mut adj, y, ng);
                    }
                    Bin::Mul => {
                        let gx = bld.binary(Bin::Mul, g, y);
                        push(bld, &mut adj, x, gx);
                        let gy = bld.binary(Bin::Mul, g, x);
                        push(bld, &mut adj, y, gy);
                    }
                    Bin::Div => {
                        let gx = bld.binary(Bin::Div, g, y);
                        push(bld, &mut adj, x, gx);
                        if bld.grad(y) {
                            let t = bld.binary(Bin::Div, id, y);
                            let t = bld.binary(Bin::Mul, g, t);
                            let gy = bld.unary(Un::Neg, t);
                            push(bld, &mut adj, y, gy);
                        }
                    }
                    Bin::Pow => {
                        if bld.grad(x) {
                            let one = bld.c(1.0);
                            let ym1 = bld.binary(Bin::Sub, y, one);
                            let p = bld.binary(Bin::Pow, x, ym1);
                            let t = bld.binary(Bin::Mul, y, p);
                            let gx = bld.binary(Bin::Mul, g, t);
                            push(bld, &mut adj, x, gx);
                        }
                        if bld.grad(y) {
                            let lx = bld.unary(Un::Log, x);
                            let t = bld.binary(Bin::Mul, id, lx);
                            let gy = bld.binary(Bin::Mul, g, t);
                            push(bld, &mut adj, y, gy);
                        }
                    }
                    Bin::Min | Bin::Max => {
                        let (wins, loses) = if b == Bin::Min {
                            (Bin::Lt, Bin::Gt)
                        } else {
                            (Bin::Gt, Bin::Lt)
                        };
                        let half = bld.c(0.5);
                        let hg = bld.binary(Bin::Mul, half, g);
                        let tie = bld.binary(Bin::Eq, x, y);
                        for (me, other_cmp) in [(x, wins), (y, loses)] {
                            if !bld.grad(me) {
                                continue;
                            }
                            let sel = bld.binary(other_cmp, x, y);
                            let tied = bld.where_(tie, hg, zero);
                            let d = bld.where_(sel, g, tied);
                            push(bld, &mut adj, me, d);
                        }
                    }
                    _ => {}
                }
            }
            Op::Where => {
                let (c, t, e) = (a(0), a(1), a(2));
                let gt = bld.where_(c, g, zero);
                push(bld, &mut adj, t, gt);
                let ge = bld.where_(c, zero, g);
                push(bld, &mut adj, e, ge);
            }
            Op::Clamp => {
                let (x, lo, hi) = (a(0), a(1), a(2));
                let above = bld.binary(Bin::Ge, x, lo);
                let below = bld.binary(Bin::Le, x, hi);
                let inside = bld.binary(Bin::And, above, below);
                let gx = bld.where_(inside, g, zero);
                push(bld, &mut adj, x, gx);
                if bld.grad(lo) {
                    let under = bld.binary(Bin::Lt, x, lo);
                    let d = bld.where_(under, g, zero);
                    push(bld, &mut adj, lo, d);
                }
                if bld.grad(hi) {
                    let over = bld.binary(Bin::Gt, x, hi);
                    let d = bld.where_(over, g, zero);
                    push(bld, &mut adj, hi, d);
                }
            }
            Op::Broadcast => push(bld, &mut adj, a(0), g),
            Op::Reduce(r) => {
                let x = a(0);
                let xl = bld.level(x);
                let gb = bld.broadcast(g, xl);
                let d = match r {
                    Red::Sum => gb,
                    Red::Max | Red::Min => {
                        let m = bld.broadcast(id, xl);
                        let hit = bld.binary(Bin::Eq, x, m);
                        let hitf = bld.float(hit);
                        let ties = bld.reduce(Red::Sum, hitf, node.level);
                        let share = bld.binary(Bin::Div, g, ties);
                        let share = bld.broadcast(share, xl);
                        bld.where_(hit, share, zero)
                    }
                };
                // Masked-out elements are not members: no gradient.
                let d = if xl >= Level::Token && !(xl == Level::Vocab && node.level == Level::Token)
                {
                    let mask = bld.add(
                        Op::Input("mask".into()),
                        Vec::new(),
                        Level::Token,
                        DType::F64,
                    );
                    bld.binary(Bin::Mul, d, mask)
                } else {
                    d
                };
                push(bld, &mut adj, x, d);
            }
            Op::SortedCumsum { over, reverse } => {
                // y_v = sum of x_u ranked at or before v: x_u feeds every v
                // ranked at or after it — the reverse running sum of g (and
                // the other way round), with no cancellation.
                let (x, key) = (a(0), a(1));
                let xl = bld.level(x);
                let d = bld.add(
                    Op::SortedCumsum {
                        over,
                        reverse: !reverse,
                    },
                    vec![g, key],
                    xl,
                    DType::F64,
                );
                push(bld, &mut adj, x, d);
            }
            Op::Keyed(Red::Sum) => {
                // y_i = sum over members j sharing i's key: member x_j gets the
                // sum of g over every element with its key.
                let (x, key, member) = (a(0), a(1), a(2));
                let l = bld.level(x);
                let one = bld.c(1.0);
                let all = bld.broadcast(one, l);
                let back = bld.add(Op::Keyed(Red::Sum), vec![g, key, all], l, DType::F64);
                let d = bld.binary(Bin::Mul, back, member);
                push(bld, &mut adj, x, d);
            }
            Op::Keyed(_) => return Err("`min_by`/`max_by`"),
            Op::KeyedQuantile => return Err("`quantile_by`"),
            Op::Quantile { .. } => {
                return Err("`quantile`");
            }
            Op::Scan(s) => {
                if node.args.len() > 1 && bld.grad(a(1)) {
                    return Err("a scan's discount or fill");
                }
                let d = match s {
                    ScanOp::RScan => bld.add(
                        Op::Scan(ScanOp::FScan),
                        vec![g, a(1)],
                        Level::Token,
                        DType::F64,
                    ),
                    ScanOp::FScan => bld.add(
                        Op::Scan(ScanOp::RScan),
                        vec![g, a(1)],
                        Level::Token,
                        DType::F64,
                    ),
                    ScanOp::Next => bld.add(
                        Op::Scan(ScanOp::Prev),
                        vec![g, zero],
                        Level::Token,
                        DType::F64,
                    ),
                    ScanOp::Prev => bld.add(
                        Op::Scan(ScanOp::Next),
                        vec![g, zero],
                        Level::Token,
                        DType::F64,
                    ),
                    ScanOp::Latest => return Err("`latest`"),
                    ScanOp::RScanMin => {
                        return Err("`rscan_min`");
                    }
                };
                push(bld, &mut adj, a(0), d);
            }
            Op::Pick => {
                let d = bld.add(Op::OneHot, vec![g], Level::Vocab, DType::F64);
                push(bld, &mut adj, a(0), d);
            }
            Op::OneHot => {
                let d = bld.add(Op::Pick, vec![g], Level::Token, DType::F64);
                push(bld, &mut adj, a(0), d);
            }
        }
    }
    Ok(wrt.iter().map(|w| adj.get(*w).copied().flatten()).collect())
}
