//! The kernel plan (`keel_kernel::Plan`) on cubecl: one generated
//! kernel per fused loop, segmented-reduction kernels for its reductions.
//!
//! Every buffer of a run lives in one f32 arena on the device; a small
//! `meta` array holds the level lengths, B, T, V, G and each slot's offset,
//! so a kernel compiled once serves every batch shape.
//!
//! - A loop becomes [`loop_kernel`]: one unit per element; its body is the
//!   plan's instruction list, a `#[comptime]` argument the kernel unrolls
//!   (instructions over a register array, constants folded in). cubecl
//!   caches the compiled kernel by that list.
//! - A reduction inside a loop writes its masked value (the reduction's
//!   neutral element for non-members) and a member count per element; then
//!   [`hop_kernel`] reduces level by level (vocab → token → seq →
//!   group/batch), one cube per output unit with plane reductions, in a
//!   fixed order (deterministic); the last hop writes 0 for empty units.
//! - Special steps (ranks, quantiles, scans, keyed statistics) run on the
//!   host between kernels with the plan's own host code (the arena is read
//!   back and written again): correct everywhere, not yet fast.
//! - `rand` values are a pure function of the seed and the element index;
//!   they are computed on the host and uploaded with the inputs.

use cubecl::prelude::*;
use keel_check::builtins::Level;
use keel_ir::batch::{Inputs, Values, View};
use keel_ir::interp::Shape;
use keel_ir::ir::{Bin, Op, Red, ScanOp, Un};
use keel_ir::ops;
use keel_kernel::{Ins, KOp, Plan, Src, Step};
use std::collections::HashMap;

type Client = cubecl::client::Client;

/// Meta layout: lengths per level (6), then B, T, V, G, then slot offsets.
const M_B: usize = 6;
const M_T: usize = 7;
const M_V: usize = 8;
const M_G: usize = 9;
const M_OFF: usize = 10;

fn li(l: Level) -> usize {
    match l {
        Level::Step => 0,
        Level::Batch => 1,
        Level::Group => 2,
        Level::Seq => 3,
        Level::Token => 4,
        Level::Vocab => 5,
    }
}

/// An operand of a device instruction.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DSrc {
    Reg(usize),
    /// f32 bits.
    Const(u32),
    /// Arena slot and its level.
    Buf(usize, Level),
    PaddedLength,
    /// The element's vocabulary id (vocabulary loops).
    VocabIndex,
}

/// Membership of an element in a reduction.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Member {
    All,
    /// `mask[i]` (token level).
    Mask,
    /// `mask[i / V]` (vocabulary entries of masked tokens).
    MaskOfToken,
}

impl Member {
    /// The interpreter's rule for elements of `level` aggregated to `to`:
    /// masked tokens are out, a vocabulary entry goes with its token, except
    /// that every entry counts towards its own token.
    pub fn of(level: Level, to: Level) -> Member {
        match level {
            Level::Vocab if to == Level::Token => Member::All,
            Level::Vocab => Member::MaskOfToken,
            Level::Token => Member::Mask,
            _ => Member::All,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum DIns {
    Un(usize, Un, DSrc),
    Bin(usize, Bin, DSrc, DSrc),
    Where(usize, DSrc, DSrc, DSrc),
    Clamp(usize, DSrc, DSrc, DSrc),
    Copy(usize, DSrc),
    /// `arena[slot][i] = regs[reg]`
    Store(usize, usize),
    /// value slot, count slot, neutral element (f32 bits), membership
    Accum(DSrc, usize, usize, u32, Member),
    /// Row kernels: fold into accumulator k with the reduction, membership.
    RowAccum(DSrc, usize, Red, Member),
}

/// Where a row kernel's accumulator goes after the plane reduction: the
/// value and count slots at the row's level, or (`finalize`) the plan's
/// buffer directly, 0 for an empty row.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RowOut {
    pub red: Red,
    pub val: usize,
    pub cnt: usize,
    pub finalize: bool,
}

/// The comptime configuration of one generated loop kernel.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LoopCfg {
    pub level: Level,
    pub regs: usize,
    pub ins: Vec<DIns>,
    pub mask_slot: usize,
    /// Row kernels (token and vocabulary loops): one cube per row of the
    /// next coarser level, its units striding along the row; reductions
    /// fold in registers and finish with plane reductions.
    pub rows: Vec<RowOut>,
}

/// One level of a segmented reduction.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct HopCfg {
    pub red: Red,
    pub from: Level,
    pub to: Level,
    pub src: (usize, usize),
    pub dst: (usize, usize),
    pub finalize: bool,
}

#[cube]
fn parent(
    i: usize,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    #[comptime] from: Level,
    #[comptime] to: Level,
) -> usize {
    let mut q = i;
    if comptime![to < from && to <= Level::Batch] {
        q = 0;
    } else if comptime![to < from] {
        let v = meta[M_V] as usize;
        let t = meta[M_T] as usize;
        if comptime![from == Level::Vocab && to == Level::Token] {
            q = i / v;
        } else if comptime![from == Level::Vocab] {
            q = i / (v * t);
        } else if comptime![from == Level::Token] {
            q = i / t;
        }
        if comptime![to == Level::Group] {
            q = groups[q] as usize;
        }
    }
    q
}

#[cube]
fn read(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    regs: &mut Array<f32>,
    i: usize,
    #[comptime] src: DSrc,
    #[comptime] level: Level,
) -> f32 {
    match src {
        DSrc::Reg(r) => regs[r],
        DSrc::Const(bits) => f32::new(comptime![f32::from_bits(bits)]),
        DSrc::PaddedLength => f32::cast_from(meta[M_T]),
        DSrc::VocabIndex => f32::cast_from(i % (meta[M_V] as usize)),
        DSrc::Buf(slot, from) => {
            let off = meta[comptime![M_OFF + slot]] as usize;
            arena[off + parent(i, meta, groups, level, from)]
        }
    }
}

/// 1 where element `i` is a member of a reduction, else 0.
#[cube]
fn member_flag(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    i: usize,
    #[comptime] member: Member,
    #[comptime] mask_slot: usize,
) -> f32 {
    let moff = meta[comptime![M_OFF + mask_slot]] as usize;
    let mut m = f32::new(1.0);
    match member {
        Member::All => {}
        Member::Mask => {
            m = arena[moff + i];
        }
        Member::MaskOfToken => {
            m = arena[moff + i / (meta[M_V] as usize)];
        }
    }
    m
}

#[cube]
fn flag(c: bool) -> f32 {
    select(c, f32::new(1.0), f32::new(0.0))
}

#[cube]
fn unary(x: f32, #[comptime] op: Un) -> f32 {
    match op {
        Un::Neg => -x,
        Un::Exp => f32::exp(x),
        Un::Log => f32::ln(x),
        Un::Log1p => f32::log1p(x),
        Un::Expm1 => f32::exp_m1(x),
        Un::Sqrt => f32::sqrt(x),
        Un::Abs => f32::abs(x),
        Un::Sign => flag(x > 0.0) - flag(x < 0.0),
        Un::Sigmoid => f32::new(1.0) / (f32::new(1.0) + f32::exp(-x)),
        Un::Softplus => f32::max(x, f32::new(0.0)) + f32::log1p(f32::exp(-f32::abs(x))),
        Un::Tanh => f32::tanh(x),
        Un::Relu => f32::max(x, f32::new(0.0)),
        Un::Cos => f32::cos(x),
        Un::Sin => f32::sin(x),
        Un::Floor => f32::floor(x),
        Un::Ceil => f32::ceil(x),
        Un::Round => f32::round(x),
        Un::Not => flag(x == 0.0),
    }
}

#[cube]
fn binary(x: f32, y: f32, #[comptime] op: Bin) -> f32 {
    match op {
        Bin::Add => x + y,
        Bin::Sub => x - y,
        Bin::Mul => x * y,
        Bin::Div => x / y,
        Bin::Pow => f32::powf(x, y),
        Bin::Min => select(y < x, y, x),
        Bin::Max => select(y > x, y, x),
        Bin::Lt => flag(x < y),
        Bin::Le => flag(x <= y),
        Bin::Gt => flag(x > y),
        Bin::Ge => flag(x >= y),
        Bin::Eq => flag(x == y),
        Bin::Ne => flag(x != y),
        Bin::And => flag(x != 0.0 && y != 0.0),
        Bin::Or => flag(x != 0.0 || y != 0.0),
    }
}

#[cube]
fn exec(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    regs: &mut Array<f32>,
    accs: &mut Array<f32>,
    cnts: &mut Array<f32>,
    i: usize,
    #[comptime] ins: DIns,
    #[comptime] level: Level,
    #[comptime] mask_slot: usize,
) {
    match ins {
        DIns::Un(dst, op, a) => {
            let x = read(arena, meta, groups, regs, i, a, level);
            regs[dst] = unary(x, op);
        }
        DIns::Bin(dst, op, a, b) => {
            let x = read(arena, meta, groups, regs, i, a, level);
            let y = read(arena, meta, groups, regs, i, b, level);
            regs[dst] = binary(x, y, op);
        }
        DIns::Where(dst, c, a, b) => {
            let cv = read(arena, meta, groups, regs, i, c, level);
            let x = read(arena, meta, groups, regs, i, a, level);
            let y = read(arena, meta, groups, regs, i, b, level);
            regs[dst] = select(cv != 0.0, x, y);
        }
        DIns::Clamp(dst, a, lo, hi) => {
            let x = read(arena, meta, groups, regs, i, a, level);
            let l = read(arena, meta, groups, regs, i, lo, level);
            let h = read(arena, meta, groups, regs, i, hi, level);
            let y = select(x < l, l, x);
            regs[dst] = select(y > h, h, y);
        }
        DIns::Copy(dst, a) => {
            regs[dst] = read(arena, meta, groups, regs, i, a, level);
        }
        DIns::Store(reg, slot) => {
            let off = meta[comptime![M_OFF + slot]] as usize;
            arena[off + i] = regs[reg];
        }
        DIns::Accum(src, vslot, cslot, neutral, member) => {
            let x = read(arena, meta, groups, regs, i, src, level);
            let m = member_flag(arena, meta, i, member, mask_slot);
            let vo = meta[comptime![M_OFF + vslot]] as usize;
            let co = meta[comptime![M_OFF + cslot]] as usize;
            let inside = m != 0.0;
            arena[vo + i] = select(inside, x, f32::new(comptime![f32::from_bits(neutral)]));
            arena[co + i] = flag(inside);
        }
        DIns::RowAccum(src, k, red, member) => {
            let x = read(arena, meta, groups, regs, i, src, level);
            let m = member_flag(arena, meta, i, member, mask_slot);
            if m != 0.0 {
                accs[k] = combine(accs[k], x, red);
                cnts[k] += f32::new(1.0);
            }
        }
    }
}

/// The loop body at element `i`: the instruction list, unrolled.
#[cube]
fn body(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    regs: &mut Array<f32>,
    accs: &mut Array<f32>,
    cnts: &mut Array<f32>,
    i: usize,
    #[comptime] cfg: &LoopCfg,
) {
    #[unroll]
    for k in 0..cfg.ins.len() {
        let ins = comptime![cfg.ins[k].clone()];
        exec(
            arena,
            meta,
            groups,
            regs,
            accs,
            cnts,
            i,
            ins,
            comptime![cfg.level],
            comptime![cfg.mask_slot],
        );
    }
}

#[cube(launch_unchecked)]
fn loop_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    #[comptime] cfg: LoopCfg,
) {
    let i = ABSOLUTE_POS;
    let len = meta[comptime![li(cfg.level)]] as usize;
    if i < len {
        let mut regs = Array::<f32>::new(comptime![cfg.regs.max(1)]);
        let mut accs = Array::<f32>::new(1usize);
        let mut cnts = Array::<f32>::new(1usize);
        body(
            arena, meta, groups, &mut regs, &mut accs, &mut cnts, i, &cfg,
        );
    }
}

/// A token (vocabulary) loop: one plane per row of the sequence (token)
/// level, several rows per cube ([`crate::rows_per_cube`]); its units
/// stride along the row, fold reductions in registers and
/// finish them with plane reductions, so no per-element value of a
/// reduction reaches memory.
#[cube(launch_unchecked)]
fn row_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    #[comptime] cfg: LoopCfg,
) {
    let row = crate::plane_row();
    let mut seg = meta[M_T] as usize;
    let mut rows = meta[comptime![li(Level::Seq)]] as usize;
    if comptime![cfg.level == Level::Vocab] {
        seg = meta[M_V] as usize;
        rows = meta[comptime![li(Level::Token)]] as usize;
    }
    let n_acc = comptime![cfg.rows.len().max(1)];
    let mut regs = Array::<f32>::new(comptime![cfg.regs.max(1)]);
    let mut accs = Array::<f32>::new(n_acc);
    let mut cnts = Array::<f32>::new(n_acc);
    #[unroll]
    for k in 0..cfg.rows.len() {
        let red = comptime![cfg.rows[k].red];
        accs[k] = f32::new(comptime![neutral(red)]);
        cnts[k] = f32::new(0.0);
    }
    if row < rows {
        let mut j = UNIT_POS_X as usize;
        while j < seg {
            let i = row * seg + j;
            body(
                arena, meta, groups, &mut regs, &mut accs, &mut cnts, i, &cfg,
            );
            j += CUBE_DIM_X as usize;
        }
    }
    #[unroll]
    for k in 0..cfg.rows.len() {
        let out = comptime![cfg.rows[k].clone()];
        let all = plane_reduce(accs[k], out.red);
        let n = plane_sum(cnts[k]);
        if UNIT_POS_X == 0 && row < rows {
            let dv = meta[comptime![M_OFF + out.val]] as usize;
            if comptime![out.finalize] {
                arena[dv + row] = select(n > 0.0, all, f32::new(0.0));
            } else {
                let dc = meta[comptime![M_OFF + out.cnt]] as usize;
                arena[dv + row] = all;
                arena[dc + row] = n;
            }
        }
    }
}

#[cube]
fn combine(a: f32, b: f32, #[comptime] red: Red) -> f32 {
    match red {
        Red::Sum => a + b,
        Red::Max => f32::max(a, b),
        Red::Min => f32::min(a, b),
    }
}

/// The plane reduction `red` of `x`.
#[cube]
fn plane_reduce(x: f32, #[comptime] red: Red) -> f32 {
    let mut all = plane_sum(x);
    if comptime![red == Red::Max] {
        all = plane_max(x);
    } else if comptime![red == Red::Min] {
        all = plane_min(x);
    }
    all
}

/// A segmented reduction, one cube per output unit. A hop to the batch
/// (one unit: the loss's sums, the metrics) runs `planes` planes in its
/// one cube, combined through shared memory in plane order: a single plane
/// would walk every sequence of the batch alone, a latency-bound loop of
/// B / 32 dependent steps on one multiprocessor.
#[cube(launch_unchecked)]
fn hop_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    #[comptime] cfg: HopCfg,
    #[comptime] neutral: u32,
    #[comptime] planes: usize,
) {
    hop_unit(arena, meta, groups, CUBE_POS, cfg, neutral, planes);
}

/// Several independent hops to the batch in one launch, cube k computing
/// hop k (a GRPO step has six: its loss terms, token count and metrics),
/// so that they run side by side instead of one launch after another.
// An index loop: `#[unroll]` expands it at compile time, one branch per hop.
#[allow(clippy::needless_range_loop)]
#[cube(launch_unchecked)]
fn batch_hops_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    #[comptime] hops: Vec<(HopCfg, u32)>,
    #[comptime] planes: usize,
) {
    #[unroll]
    for k in 0..hops.len() {
        if CUBE_POS == k {
            let cfg = comptime![hops[k].0.clone()];
            let neutral = comptime![hops[k].1];
            hop_unit(arena, meta, groups, 0, cfg, neutral, planes);
        }
    }
}

/// Output unit `u` of a hop (see [`hop_kernel`]).
#[cube]
fn hop_unit(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    u: usize,
    #[comptime] cfg: HopCfg,
    #[comptime] neutral: u32,
    #[comptime] planes: usize,
) {
    let units = meta[comptime![li(cfg.to)]] as usize;
    let step = CUBE_DIM as usize;
    let sv = meta[comptime![M_OFF + cfg.src.0]] as usize;
    let sc = meta[comptime![M_OFF + cfg.src.1]] as usize;
    let mut acc = f32::new(comptime![f32::from_bits(neutral)]);
    let mut cnt = f32::new(0.0);
    if u < units {
        if comptime![cfg.to == Level::Group] {
            // `groups` holds [group of each sequence (B) | first member of
            // each group (G + 1) | members, group by group (B)].
            let b = meta[M_B] as usize;
            let starts = b;
            let members = b + meta[M_G] as usize + 1;
            let end = groups[starts + u + 1] as usize;
            let mut j = groups[starts + u] as usize + UNIT_POS as usize;
            while j < end {
                let k = groups[members + j] as usize;
                acc = combine(acc, arena[sv + k], cfg.red);
                cnt += arena[sc + k];
                j += step;
            }
        } else if comptime![cfg.to <= Level::Batch] {
            let n = meta[comptime![li(cfg.from)]] as usize;
            let mut k = UNIT_POS as usize;
            while k < n {
                acc = combine(acc, arena[sv + k], cfg.red);
                cnt += arena[sc + k];
                k += step;
            }
        } else {
            let mut seg = meta[M_T] as usize;
            if comptime![cfg.from == Level::Vocab] {
                seg = meta[M_V] as usize;
            }
            let base = u * seg;
            let mut k = UNIT_POS as usize;
            while k < seg {
                acc = combine(acc, arena[sv + base + k], cfg.red);
                cnt += arena[sc + base + k];
                k += step;
            }
        }
    }
    let mut all = plane_reduce(acc, cfg.red);
    let mut n = plane_sum(cnt);
    if comptime![planes > 1] {
        let mut vals = Shared::<[f32]>::new_slice(planes);
        let mut cnts = Shared::<[f32]>::new_slice(planes);
        if UNIT_POS_X == 0 {
            vals[UNIT_POS_Y as usize] = all;
            cnts[UNIT_POS_Y as usize] = n;
        }
        sync_cube();
        let mut a = f32::new(comptime![f32::from_bits(neutral)]);
        let mut c = f32::new(0.0);
        let mut j = UNIT_POS_X as usize;
        while j < planes {
            a = combine(a, vals[j], cfg.red);
            c += cnts[j];
            j += CUBE_DIM_X as usize;
        }
        all = plane_reduce(a, cfg.red);
        n = plane_sum(c);
    }
    if UNIT_POS == 0 && u < units {
        let dv = meta[comptime![M_OFF + cfg.dst.0]] as usize;
        if comptime![cfg.finalize] {
            arena[dv + u] = select(n > 0.0, all, f32::new(0.0));
        } else {
            let dc = meta[comptime![M_OFF + cfg.dst.1]] as usize;
            arena[dv + u] = all;
            arena[dc + u] = n;
        }
    }
}

/// A scan along each sequence over its valid tokens (the interpreter's
/// definition; masked positions get 0): one unit per sequence.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ScanCfg {
    pub op: ScanOp,
    pub x: DSrc,
    /// g (RScan, FScan), the fill (Next, Prev) or the condition (Latest).
    pub p: DSrc,
    /// The fill of Latest.
    pub fill: DSrc,
    pub out: usize,
    pub mask_slot: usize,
}

#[cube(launch_unchecked)]
fn scan_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    #[comptime] cfg: ScanCfg,
) {
    let b = ABSOLUTE_POS;
    let rows = meta[comptime![li(Level::Seq)]] as usize;
    let t = meta[M_T] as usize;
    let mut regs = Array::<f32>::new(1usize);
    if b < rows {
        let moff = meta[comptime![M_OFF + cfg.mask_slot]] as usize;
        let out = meta[comptime![M_OFF + cfg.out]] as usize;
        let start = b * t;
        let lv = comptime![Level::Token];
        if comptime![matches!(
            cfg.op,
            ScanOp::RScan | ScanOp::RScanMin | ScanOp::Next
        )] {
            let mut acc = f32::new(0.0);
            if comptime![cfg.op == ScanOp::RScanMin] {
                acc = f32::new(f32::MAX);
            }
            let mut seen = false;
            let mut j = t;
            while j > 0 {
                j -= 1;
                let i = start + j;
                let mut y = f32::new(0.0);
                if arena[moff + i] != 0.0 {
                    let x = read(arena, meta, groups, &mut regs, i, cfg.x, lv);
                    let p = read(arena, meta, groups, &mut regs, i, cfg.p, lv);
                    if comptime![cfg.op == ScanOp::RScan] {
                        acc = x + p * acc;
                        y = acc;
                    } else if comptime![cfg.op == ScanOp::RScanMin] {
                        acc = f32::min(x, acc);
                        y = acc;
                    } else {
                        y = select(seen, acc, p);
                        acc = x;
                        seen = true;
                    }
                }
                arena[out + i] = y;
            }
        } else {
            let mut acc = f32::new(0.0);
            if comptime![cfg.op == ScanOp::Latest] {
                acc = read(arena, meta, groups, &mut regs, start, cfg.fill, lv);
            }
            let mut seen = false;
            let mut j = 0usize;
            while j < t {
                let i = start + j;
                let mut y = f32::new(0.0);
                if arena[moff + i] != 0.0 {
                    let x = read(arena, meta, groups, &mut regs, i, cfg.x, lv);
                    let p = read(arena, meta, groups, &mut regs, i, cfg.p, lv);
                    if comptime![cfg.op == ScanOp::FScan] {
                        acc = x + p * acc;
                        y = acc;
                    } else if comptime![cfg.op == ScanOp::Latest] {
                        acc = select(p != 0.0, x, acc);
                        y = acc;
                    } else {
                        y = select(seen, acc, p);
                        acc = x;
                        seen = true;
                    }
                }
                arena[out + i] = y;
                j += 1;
            }
        }
    }
}

/// What a selection computes from its sorted members.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SelKind {
    Rank,
    Quantile,
    SortedCumsum,
}

/// A rank, quantile or sorted running sum within each unit of `over`: the
/// members are sorted on the device by (unit, key descending, index) with a
/// bitonic sort — a fixed network, so the result is deterministic — then
/// read off.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SelCfg {
    pub kind: SelKind,
    /// The members' level.
    pub level: Level,
    pub over: Level,
    /// The sort key (the value itself for ranks and quantiles).
    pub key: DSrc,
    /// What a sorted running sum adds up.
    pub x: DSrc,
    /// A quantile's q.
    pub q: DSrc,
    pub out: usize,
    pub mask_slot: usize,
    /// A sorted running sum from the other end (a suffix sum).
    pub reverse: bool,
}

const NO_UNIT: u32 = u32::MAX;

#[cube(launch_unchecked)]
fn sel_keys_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    units: &mut Tensor<u32>,
    vals: &mut Tensor<f32>,
    idx: &mut Tensor<u32>,
    n_pad: usize,
    #[comptime] cfg: SelCfg,
) {
    let i = ABSOLUTE_POS;
    let n = meta[comptime![li(cfg.level)]] as usize;
    let mut regs = Array::<f32>::new(1usize);
    if i < n_pad {
        let mut u = u32::new(comptime![NO_UNIT as i64]);
        let mut v = f32::new(0.0);
        if i < n {
            let member = comptime![Member::of(cfg.level, cfg.over)];
            if member_flag(arena, meta, i, member, cfg.mask_slot) != 0.0 {
                u = parent(i, meta, groups, cfg.level, cfg.over) as u32;
            }
            v = read(arena, meta, groups, &mut regs, i, cfg.key, cfg.level);
            if comptime![cfg.kind == SelKind::SortedCumsum] {
                let out = meta[comptime![M_OFF + cfg.out]] as usize;
                arena[out + i] = f32::new(0.0);
            }
        }
        units[i] = u;
        vals[i] = v;
        idx[i] = i as u32;
    }
}

/// Whether member a sorts before member b: unit, then key descending, then
/// index.
#[cube]
fn before(ua: u32, va: f32, ia: u32, ub: u32, vb: f32, ib: u32) -> bool {
    ua < ub || (ua == ub && (va > vb || (va == vb && ia < ib)))
}

#[cube(launch_unchecked)]
fn bitonic_kernel(
    units: &mut Tensor<u32>,
    vals: &mut Tensor<f32>,
    idx: &mut Tensor<u32>,
    n_pad: usize,
    k: usize,
    j: usize,
) {
    let i = ABSOLUTE_POS;
    let p = i ^ j;
    if i < n_pad && p > i {
        let (ua, va, ia) = (units[i], vals[i], idx[i]);
        let (ub, vb, ib) = (units[p], vals[p], idx[p]);
        let up = (i & k) == 0;
        let swap = select(
            up,
            before(ub, vb, ib, ua, va, ia),
            before(ua, va, ia, ub, vb, ib),
        );
        if swap {
            units[i] = ub;
            vals[i] = vb;
            idx[i] = ib;
            units[p] = ua;
            vals[p] = va;
            idx[p] = ia;
        }
    }
}

#[cube(launch_unchecked)]
fn sel_bounds_kernel(
    units: &Tensor<u32>,
    start: &mut Tensor<u32>,
    end: &mut Tensor<u32>,
    n_pad: usize,
) {
    let p = ABSOLUTE_POS;
    if p < n_pad {
        let u = units[p];
        if u != NO_UNIT {
            if p == 0 || units[p - 1] != u {
                start[u as usize] = p as u32;
            }
            if p + 1 == n_pad || units[p + 1] != u {
                end[u as usize] = (p + 1) as u32;
            }
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn sel_out_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    units: &Tensor<u32>,
    vals: &Tensor<f32>,
    idx: &Tensor<u32>,
    start: &Tensor<u32>,
    end: &Tensor<u32>,
    n_pad: usize,
    #[comptime] cfg: SelCfg,
) {
    let t = ABSOLUTE_POS;
    let out = meta[comptime![M_OFF + cfg.out]] as usize;
    let n = meta[comptime![li(cfg.level)]] as usize;
    let n_units = meta[comptime![li(cfg.over)]] as usize;
    let mut regs = Array::<f32>::new(1usize);
    if comptime![cfg.kind == SelKind::Rank] {
        if t < n_pad {
            let i = idx[t] as usize;
            let u = units[t];
            if i < n {
                let mut r = f32::new(f32::MAX);
                if u != NO_UNIT {
                    r = f32::cast_from(t - start[u as usize] as usize);
                }
                arena[out + i] = r;
            }
        }
    } else if t < n_units {
        let s = start[t] as usize;
        let c = end[t] as usize - s;
        if comptime![cfg.kind == SelKind::Quantile] {
            let mut y = f32::new(0.0);
            if c > 0 {
                let q = read(arena, meta, groups, &mut regs, t, cfg.q, cfg.over);
                let q = f32::min(f32::max(q, f32::new(0.0)), f32::new(1.0));
                let pos = q * f32::cast_from(c - 1);
                let lo = f32::floor(pos);
                let hi = f32::ceil(pos);
                // Ascending rank k sits at sorted position s + c - 1 - k.
                let xlo = vals[s + c - 1 - (lo as usize)];
                let xhi = vals[s + c - 1 - (hi as usize)];
                y = xlo + (xhi - xlo) * (pos - lo);
            }
            arena[out + t] = y;
        } else {
            let mut acc = f32::new(0.0);
            let mut k = 0usize;
            while k < c {
                let mut p = s + k;
                if comptime![cfg.reverse] {
                    p = s + c - 1 - k;
                }
                let i = idx[p] as usize;
                acc += read(arena, meta, groups, &mut regs, i, cfg.x, cfg.level);
                arena[out + i] = acc;
                k += 1;
            }
        }
    }
}

/// `pick` (the sampled token's entry of a vocabulary value) or `onehot`
/// (a token value scattered to the sampled token's entry).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct GatherCfg {
    pub onehot: bool,
    pub x: DSrc,
    pub tokens_slot: usize,
    pub out: usize,
}

#[cube(launch_unchecked)]
fn gather_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    #[comptime] cfg: GatherCfg,
) {
    let i = ABSOLUTE_POS;
    let v = meta[M_V] as usize;
    let tok_off = meta[comptime![M_OFF + cfg.tokens_slot]] as usize;
    let out = meta[comptime![M_OFF + cfg.out]] as usize;
    let mut regs = Array::<f32>::new(1usize);
    if comptime![cfg.onehot] {
        if i < meta[comptime![li(Level::Vocab)]] as usize {
            let t = i / v;
            let tok = arena[tok_off + t] as usize;
            let g = read(arena, meta, groups, &mut regs, t, cfg.x, Level::Token);
            arena[out + i] = select(i - t * v == tok, g, f32::new(0.0));
        }
    } else if i < meta[comptime![li(Level::Token)]] as usize {
        let tok = arena[tok_off + i] as usize;
        arena[out + i] = read(
            arena,
            meta,
            groups,
            &mut regs,
            i * v + tok,
            cfg.x,
            Level::Vocab,
        );
    }
}

/// A keyed statistic (`sum_by`, `min_by`, `max_by`, `quantile_by`): every
/// element gets the statistic of the members that share its key (0 for a key
/// without members). Elements are sorted by (key, members first, then for
/// quantiles x ascending, index) with the bitonic sort; one unit per run of
/// equal keys reads the run off in order — the interpreter's order, so sums
/// agree to the last bit of f32.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct KeyedCfg {
    /// `None`: a quantile.
    pub red: Option<Red>,
    pub level: Level,
    pub x: DSrc,
    pub q: DSrc,
    pub key: DSrc,
    pub member: DSrc,
    pub out: usize,
    pub mask_slot: usize,
}

/// Whether element `i` is a member of its key's statistic.
#[cube]
fn keyed_member(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    regs: &mut Array<f32>,
    i: usize,
    #[comptime] cfg: &KeyedCfg,
) -> bool {
    let mut valid = true;
    if comptime![cfg.level == Level::Token] {
        let moff = meta[comptime![M_OFF + cfg.mask_slot]] as usize;
        valid = arena[moff + i] != 0.0;
    }
    let m = read(arena, meta, groups, regs, i, cfg.member, cfg.level);
    valid && m != 0.0
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn keyed_keys_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    units: &mut Tensor<u32>,
    vals: &mut Tensor<f32>,
    idx: &mut Tensor<u32>,
    n_pad: usize,
    #[comptime] cfg: KeyedCfg,
) {
    let i = ABSOLUTE_POS;
    let n = meta[comptime![li(cfg.level)]] as usize;
    let mut regs = Array::<f32>::new(1usize);
    if i < n_pad {
        let mut u = u32::new(comptime![NO_UNIT as i64]);
        let mut v = f32::new(0.0);
        if i < n {
            // The key's bits, in an order-preserving unsigned form.
            let k = read(arena, meta, groups, &mut regs, i, cfg.key, cfg.level);
            let b = k.to_bits();
            u = select(b >= 2147483648u32, b ^ 4294967295u32, b | 2147483648u32);
            let m = keyed_member(arena, meta, groups, &mut regs, i, &cfg);
            if comptime![cfg.red.is_none()] {
                let x = read(arena, meta, groups, &mut regs, i, cfg.x, cfg.level);
                v = select(m, -x, -f32::new(f32::MAX));
            } else {
                v = flag(m);
            }
        }
        units[i] = u;
        vals[i] = v;
        idx[i] = i as u32;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn keyed_out_kernel(
    arena: &mut Tensor<f32>,
    meta: &Tensor<u32>,
    groups: &Tensor<u32>,
    units: &Tensor<u32>,
    vals: &Tensor<f32>,
    idx: &Tensor<u32>,
    n_pad: usize,
    #[comptime] cfg: KeyedCfg,
) {
    let p = ABSOLUTE_POS;
    let out = meta[comptime![M_OFF + cfg.out]] as usize;
    let mut regs = Array::<f32>::new(1usize);
    if p < n_pad {
        let u = units[p];
        if u != NO_UNIT && (p == 0 || units[p - 1] != u) {
            let mut e = p;
            let mut c = 0usize;
            while e < n_pad && units[e] == u {
                if keyed_member(arena, meta, groups, &mut regs, idx[e] as usize, &cfg) {
                    c += 1;
                }
                e += 1;
            }
            if comptime![cfg.red.is_none()] {
                // Members first, x ascending (vals = -x).
                let mut r = p;
                while r < e {
                    let i = idx[r] as usize;
                    let mut y = f32::new(0.0);
                    if c > 0 {
                        let q = read(arena, meta, groups, &mut regs, i, cfg.q, cfg.level);
                        let q = f32::min(f32::max(q, f32::new(0.0)), f32::new(1.0));
                        let pos = q * f32::cast_from(c - 1);
                        let lo = f32::floor(pos);
                        let hi = f32::ceil(pos);
                        let xlo = -vals[p + lo as usize];
                        let xhi = -vals[p + hi as usize];
                        y = xlo + (xhi - xlo) * (pos - lo);
                    }
                    arena[out + i] = y;
                    r += 1;
                }
            } else {
                let red = comptime![cfg.red.unwrap_or(Red::Sum)];
                let mut acc = f32::new(comptime![neutral(red)]);
                let mut r = p;
                while r < e {
                    let i = idx[r] as usize;
                    if keyed_member(arena, meta, groups, &mut regs, i, &cfg) {
                        let x = read(arena, meta, groups, &mut regs, i, cfg.x, cfg.level);
                        acc = combine(acc, x, red);
                    }
                    r += 1;
                }
                let y = select(c > 0, acc, f32::new(0.0));
                let mut r = p;
                while r < e {
                    arena[out + idx[r] as usize] = y;
                    r += 1;
                }
            }
        }
    }
}

/// The neutral element of a reduction. Shader languages have no infinite
/// literals (WGSL rejects them), so ±f32::MAX stands in; member counts keep
/// empty units apart.
fn neutral(red: Red) -> f32 {
    match red {
        Red::Sum => 0.0,
        Red::Max => -f32::MAX,
        Red::Min => f32::MAX,
    }
}

/// A constant as a finite f32 (no infinite or NaN literals in shaders);
/// a nonzero constant below f32's range keeps its sign as the smallest
/// normal f32 (a guard like `max(s, 1e-300)` stays positive).
fn finite(c: f64) -> f32 {
    let x = c as f32;
    if x.is_nan() {
        0.0
    } else if x == 0.0 && c != 0.0 {
        f32::MIN_POSITIVE.copysign(x)
    } else {
        x.clamp(-f32::MAX, f32::MAX)
    }
}

/// The group table the kernels read: the group of each sequence, then the
/// first member of each group (G + 1 entries, a counting sort's offsets),
/// then the sequences group by group, in order — a seq → group hop reads
/// each sequence once.
fn group_table(group_of: &[usize], n_groups: usize) -> Vec<u32> {
    let b = group_of.len();
    let mut table = Vec::with_capacity(2 * b + n_groups + 1);
    table.extend(group_of.iter().map(|&g| g as u32));
    let mut starts = vec![0u32; n_groups + 1];
    for &g in group_of {
        starts[g.min(n_groups.saturating_sub(1)) + 1] += 1;
    }
    for g in 0..n_groups {
        starts[g + 1] += starts[g];
    }
    let mut next = starts.clone();
    let mut members = vec![0u32; b];
    for (k, &g) in group_of.iter().enumerate() {
        let slot = &mut next[g.min(n_groups.saturating_sub(1))];
        members[*slot as usize] = k as u32;
        *slot += 1;
    }
    table.extend(starts);
    table.extend(members);
    table
}

type Handle = cubecl::server::Handle;

fn raw(h: &Handle, n: usize) -> TensorArg {
    // SAFETY (for every launch of this module): kernels index below the
    // lengths given here or in `meta`, which describe these buffers.
    unsafe { TensorArg::from_raw_parts(h.clone(), [1].into(), [n].into()) }
}

/// A grid of `dim`-unit cubes covering `threads` units (two dimensions past
/// 65,535 cubes).
fn grid(threads: usize, dim: u32) -> CubeCount {
    let cubes = threads.div_ceil(dim as usize) as u32;
    CubeCount::Static(cubes.min(65_535), cubes.div_ceil(65_535), 1)
}

/// Sort (units, vals, idx) by unit ascending, val descending, idx
/// ascending: a bitonic network, log2(n)·(log2(n)+1)/2 launches.
fn bitonic_sort(
    client: &Client,
    units: &Handle,
    vals: &Handle,
    idx: &Handle,
    n_pad: usize,
    dim: u32,
) {
    let mut k = 2;
    while k <= n_pad {
        let mut j = k / 2;
        while j > 0 {
            unsafe {
                bitonic_kernel::launch_unchecked(
                    client,
                    grid(n_pad, dim),
                    CubeDim::new_1d(dim),
                    raw(units, n_pad),
                    raw(vals, n_pad),
                    raw(idx, n_pad),
                    n_pad,
                    k,
                    j,
                )
            };
            j /= 2;
        }
        k *= 2;
    }
}

/// What the device runs for one plan step.
#[derive(Clone, Debug)]
enum DStep {
    Loop(LoopCfg),
    Hop(HopCfg),
    Scan(ScanCfg),
    Select(SelCfg),
    Keyed(KeyedCfg),
    Gather(GatherCfg),
    /// Index of the plan's special step.
    Special(usize),
}

/// What [`DevicePlan::execute`] launches: one step, or a run of
/// consecutive independent hops to the batch in one kernel.
enum Launch<'a> {
    One(&'a DStep),
    BatchHops(Vec<&'a HopCfg>),
}

/// The steps, with each run of two or more consecutive hops to the batch
/// merged into one launch — as long as none of them reads or writes a
/// slot another of them writes (they then run side by side).
fn batch_hop_runs(steps: &[DStep], max_run: usize) -> Vec<Launch<'_>> {
    fn batch_hop(st: &DStep) -> Option<&HopCfg> {
        match st {
            DStep::Hop(h) if h.to <= Level::Batch => Some(h),
            _ => None,
        }
    }
    fn flush<'a>(run: &mut Vec<&'a DStep>, out: &mut Vec<Launch<'a>>) {
        match run.as_slice() {
            [] => {}
            [one] => out.push(Launch::One(one)),
            many => out.push(Launch::BatchHops(
                many.iter().filter_map(|s| batch_hop(s)).collect(),
            )),
        }
        run.clear();
    }
    let conflict = |a: &HopCfg, b: &HopCfg| {
        let (aw, bw) = ([a.dst.0, a.dst.1], [b.dst.0, b.dst.1]);
        let (ar, br) = ([a.src.0, a.src.1], [b.src.0, b.src.1]);
        aw.iter().any(|x| br.contains(x) || bw.contains(x)) || bw.iter().any(|x| ar.contains(x))
    };
    let mut out = Vec::new();
    let mut run: Vec<&DStep> = Vec::new();
    for st in steps {
        match batch_hop(st) {
            Some(h) => {
                let clash = run
                    .iter()
                    .filter_map(|s| batch_hop(s))
                    .any(|r| conflict(r, h));
                if run.len() >= max_run || clash {
                    flush(&mut run, &mut out);
                }
                run.push(st);
            }
            None => {
                flush(&mut run, &mut out);
                out.push(Launch::One(st));
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// One batch on the device: the arena and its layout.
pub struct OnDevice {
    arena: cubecl::server::Handle,
    meta: cubecl::server::Handle,
    groups: cubecl::server::Handle,
    meta_len: usize,
    groups_len: usize,
    total: usize,
    offsets: Vec<usize>,
    shape: Shape,
    mask: Vec<f32>,
    tokens: Option<Vec<f64>>,
    /// Units per cube of the elementwise kernels (256, or the runtime's
    /// limit if lower).
    dim: u32,
}

impl OnDevice {
    /// Bytes of the arena (inputs, intermediate values, outputs).
    pub fn bytes(&self) -> usize {
        self.total * 4
    }
}

/// A plan compiled for the device: kernels, and the arena's slots.
pub struct DevicePlan {
    plan: Plan,
    steps: Vec<DStep>,
    /// Level of every arena slot (the plan's buffers first).
    slots: Vec<Level>,
    mask_slot: usize,
    /// The sampled tokens, for `pick` and `onehot`.
    tokens_slot: Option<usize>,
    /// Slots holding `rand` values (computed on the host at upload): (slot,
    /// seed).
    rands: Vec<(usize, Seed)>,
}

/// A `rand` seed: a constant, or a step-level value the host computes from
/// the step's inputs and the hyperparameters (`seed + step`).
#[derive(Clone, Copy, Debug)]
enum Seed {
    Const(f64),
    Host(keel_ir::ir::NodeId),
}

/// Whether node `id` is a step-level value the host can compute before the
/// batch is uploaded: constants, hyperparameters, step inputs, the padded
/// length and elementwise operations of them.
fn on_host(g: &keel_ir::ir::Graph, id: keel_ir::ir::NodeId) -> bool {
    let n = &g.nodes[id];
    n.level == Level::Step
        && match n.op {
            Op::Const(_) | Op::Param { .. } | Op::Input(_) | Op::PaddedLength => true,
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Clamp | Op::StopGrad => {
                n.args.iter().all(|&a| on_host(g, a))
            }
            _ => false,
        }
}

/// Copy an input into its place in the host arena, as f32.
fn lay_out(dst: &mut [f32], x: View) {
    match x {
        View::F32(x) => dst.copy_from_slice(x),
        other => {
            for (o, y) in dst.iter_mut().zip(other.iter()) {
                *o = y as f32;
            }
        }
    }
}

/// The value of a node [`on_host`] accepts, as the interpreter computes it.
fn host_value(
    g: &keel_ir::ir::Graph,
    id: keel_ir::ir::NodeId,
    inputs: &dyn Inputs,
    sh: &Shape,
) -> Result<f64, String> {
    let n = &g.nodes[id];
    let arg = |k: usize| -> Result<f64, String> {
        let a = n.args.get(k).ok_or("internal: a missing argument")?;
        host_value(g, *a, inputs, sh)
    };
    Ok(match &n.op {
        Op::Const(c) => *c,
        Op::Param { value, .. } => *value,
        Op::PaddedLength => sh.t as f64,
        Op::Input(name) => inputs
            .view(name)
            .and_then(|x| x.get(0))
            .ok_or_else(|| format!("input `{name}` was not provided"))?,
        Op::Unary(u) => ops::unary(*u, arg(0)?),
        Op::Binary(b) => ops::binary(*b, arg(0)?, arg(1)?),
        Op::Where => {
            if arg(0)? != 0.0 {
                arg(1)?
            } else {
                arg(2)?
            }
        }
        Op::Clamp => ops::clamp(arg(0)?, arg(1)?, arg(2)?),
        Op::StopGrad => arg(0)?,
        _ => return Err("internal: not a host value".into()),
    })
}

impl DevicePlan {
    /// Plan a loss program for the device (every elementwise value
    /// recomputed, [`keel_kernel::Target::Device`]) and lower it.
    pub fn of_graph(graph: &keel_ir::ir::Graph) -> Result<DevicePlan, String> {
        let plan = Plan::for_target(graph, keel_kernel::Target::Device)?;
        DevicePlan::new(&plan)
    }

    /// Lower a kernel plan to device kernels.
    pub fn new(plan: &Plan) -> Result<DevicePlan, String> {
        let mut slots: Vec<Level> = plan.buffers.iter().map(|b| b.level).collect();
        let mask_slot = slots.len();
        slots.push(Level::Token);
        let mut rands = Vec::new();
        let mut steps = Vec::new();
        let mut tokens_slot: Option<usize> = None;
        let konst = |c: f64| DSrc::Const(finite(c).to_bits());
        for (k, st) in plan.steps.iter().enumerate() {
            let lp = match st {
                Step::Special(sp) => {
                    let n = &plan.graph.nodes[sp.node];
                    let dsrc = |s: Option<&Src>| -> DSrc {
                        match s {
                            Some(Src::Const(c)) => konst(*c),
                            Some(Src::PaddedLength) => DSrc::PaddedLength,
                            Some(Src::VocabIndex) => DSrc::VocabIndex,
                            Some(Src::Buf(b)) => DSrc::Buf(*b, plan.buffers[*b].level),
                            _ => DSrc::Const(0),
                        }
                    };
                    match n.op {
                        Op::Scan(op) if n.level == Level::Token => {
                            steps.push(DStep::Scan(ScanCfg {
                                op,
                                x: dsrc(sp.args.first()),
                                p: dsrc(sp.args.get(1)),
                                fill: dsrc(sp.args.get(2)),
                                out: sp.buf,
                                mask_slot,
                            }))
                        }
                        Op::Rank { over }
                        | Op::SortedCumsum { over, .. }
                        | Op::Quantile { over } => {
                            let kind = match n.op {
                                Op::Rank { .. } => SelKind::Rank,
                                Op::Quantile { .. } => SelKind::Quantile,
                                _ => SelKind::SortedCumsum,
                            };
                            let level = plan.graph.nodes[n.args[0]].level;
                            let key = if kind == SelKind::SortedCumsum {
                                dsrc(sp.args.get(1))
                            } else {
                                dsrc(sp.args.first())
                            };
                            steps.push(DStep::Select(SelCfg {
                                kind,
                                level,
                                over: over.max(Level::Batch),
                                key,
                                x: dsrc(sp.args.first()),
                                q: dsrc(sp.args.get(1)),
                                out: sp.buf,
                                mask_slot,
                                reverse: matches!(n.op, Op::SortedCumsum { reverse: true, .. }),
                            }))
                        }
                        Op::Keyed(_) | Op::KeyedQuantile if n.level <= Level::Token => {
                            let (red, off) = match n.op {
                                Op::Keyed(r) => (Some(r), 0),
                                _ => (None, 1),
                            };
                            steps.push(DStep::Keyed(KeyedCfg {
                                red,
                                level: n.level,
                                x: dsrc(sp.args.first()),
                                q: dsrc(sp.args.get(1)),
                                key: dsrc(sp.args.get(1 + off)),
                                member: dsrc(sp.args.get(2 + off)),
                                out: sp.buf,
                                mask_slot,
                            }))
                        }
                        Op::Pick | Op::OneHot => {
                            if tokens_slot.is_none() {
                                slots.push(Level::Token);
                                tokens_slot = Some(slots.len() - 1);
                            }
                            steps.push(DStep::Gather(GatherCfg {
                                onehot: matches!(n.op, Op::OneHot),
                                x: dsrc(sp.args.first()),
                                tokens_slot: tokens_slot.unwrap_or(0),
                                out: sp.buf,
                            }))
                        }
                        _ => steps.push(DStep::Special(k)),
                    }
                    continue;
                }
                Step::Loop(lp) => lp,
            };
            let mut ins = Vec::new();
            let mut hops = Vec::new();
            let mut rows: Vec<RowOut> = Vec::new();
            let row_mode = matches!(lp.level, Level::Token | Level::Vocab);
            let src = |s: &Src| -> DSrc {
                match s {
                    Src::Reg(r) => DSrc::Reg(*r),
                    Src::Const(c) => konst(*c),
                    Src::PaddedLength => DSrc::PaddedLength,
                    Src::VocabIndex => DSrc::VocabIndex,
                    Src::Buf(b) => DSrc::Buf(*b, plan.buffers[*b].level),
                }
            };
            for i in &lp.body {
                match i {
                    Ins::Compute {
                        dst,
                        op,
                        args,
                        store,
                        node,
                    } => {
                        let a: Vec<DSrc> = args.iter().map(src).collect();
                        let get = |k: usize| a.get(k).copied().unwrap_or(DSrc::Const(0));
                        ins.push(match op {
                            KOp::Un(u) => DIns::Un(*dst, *u, get(0)),
                            KOp::Bin(b) => DIns::Bin(*dst, *b, get(0), get(1)),
                            KOp::Where => DIns::Where(*dst, get(0), get(1), get(2)),
                            KOp::Clamp => DIns::Clamp(*dst, get(0), get(1), get(2)),
                            KOp::Copy => DIns::Copy(*dst, get(0)),
                            KOp::Rand => {
                                let seed = match (args.first(), plan.graph.nodes[*node].args.first())
                                {
                                    (Some(Src::Const(c)), _) => Seed::Const(*c),
                                    (_, Some(&s)) if on_host(&plan.graph, s) => Seed::Host(s),
                                    _ => {
                                        return Err(
                                            "`rand` with a seed computed from the batch does not run on the device; compute the seed from hyperparameters and step inputs (`seed + step`)"
                                                .into(),
                                        );
                                    }
                                };
                                slots.push(lp.level);
                                rands.push((slots.len() - 1, seed));
                                DIns::Copy(*dst, DSrc::Buf(slots.len() - 1, lp.level))
                            }
                        });
                        if let Some(b) = store {
                            ins.push(DIns::Store(*dst, *b));
                        }
                    }
                    Ins::Accum {
                        src: s,
                        red,
                        to,
                        buf,
                        ..
                    } => {
                        let member = Member::of(lp.level, *to);
                        // Row kernels fold the first level in registers.
                        let (mut cur, first) = if row_mode {
                            let partial = if lp.level == Level::Vocab {
                                Level::Token
                            } else {
                                Level::Seq
                            };
                            let finalize = partial == (*to).max(Level::Batch);
                            let (v, c) = if finalize {
                                (*buf, *buf)
                            } else {
                                slots.push(partial);
                                slots.push(partial);
                                (slots.len() - 2, slots.len() - 1)
                            };
                            ins.push(DIns::RowAccum(src(s), rows.len(), *red, member));
                            rows.push(RowOut {
                                red: *red,
                                val: v,
                                cnt: c,
                                finalize,
                            });
                            (partial, (v, c))
                        } else {
                            slots.push(lp.level);
                            slots.push(lp.level);
                            let (v, c) = (slots.len() - 2, slots.len() - 1);
                            ins.push(DIns::Accum(src(s), v, c, neutral(*red).to_bits(), member));
                            (lp.level, (v, c))
                        };
                        // The hops down to the target level.
                        let target = (*to).max(Level::Batch);
                        let mut from_slots = first;
                        while cur > target {
                            let next = match cur {
                                Level::Vocab => Level::Token,
                                Level::Token => Level::Seq,
                                Level::Seq if target == Level::Group => Level::Group,
                                _ => Level::Batch,
                            };
                            let finalize = next == target;
                            let dst = if finalize {
                                (*buf, *buf)
                            } else {
                                slots.push(next);
                                slots.push(next);
                                (slots.len() - 2, slots.len() - 1)
                            };
                            hops.push(HopCfg {
                                red: *red,
                                from: cur,
                                to: next,
                                src: from_slots,
                                dst,
                                finalize,
                            });
                            from_slots = dst;
                            cur = next;
                        }
                        if lp.level <= target || cur < target {
                            return Err(format!(
                                "internal: a reduction from {} to {}",
                                lp.level.name(),
                                to.name()
                            ));
                        }
                    }
                }
            }
            steps.push(DStep::Loop(LoopCfg {
                level: lp.level,
                regs: lp.regs,
                ins,
                mask_slot,
                rows: if row_mode { rows } else { Vec::new() },
            }));
            steps.extend(hops.into_iter().map(DStep::Hop));
        }
        Ok(DevicePlan {
            plan: plan.clone(),
            steps,
            slots,
            mask_slot,
            tokens_slot,
            rands,
        })
    }

    /// The generated kernels, as their comptime configurations (what
    /// cubecl compiles; `keel compile --emit kernels` prints the plan).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for st in &self.steps {
            match st {
                DStep::Loop(c) => out.push_str(&format!(
                    "loop_kernel over {} ({} instructions, {} registers)\n",
                    c.level.name(),
                    c.ins.len(),
                    c.regs
                )),
                DStep::Hop(h) => out.push_str(&format!(
                    "hop_kernel {:?} {} -> {}\n",
                    h.red,
                    h.from.name(),
                    h.to.name()
                )),
                DStep::Scan(c) => out.push_str(&format!("scan_kernel {:?} per sequence\n", c.op)),
                DStep::Keyed(k) => out.push_str(&format!(
                    "bitonic sort + keyed {} of {} values\n",
                    k.red
                        .map(|r| format!("{r:?}"))
                        .unwrap_or_else(|| "Quantile".into()),
                    k.level.name()
                )),
                DStep::Gather(g) => out.push_str(if g.onehot {
                    "gather_kernel onehot\n"
                } else {
                    "gather_kernel pick\n"
                }),
                DStep::Select(c) => out.push_str(&format!(
                    "bitonic sort + {:?} of {} values over {}\n",
                    c.kind,
                    c.level.name(),
                    c.over.name()
                )),
                DStep::Special(k) => out.push_str(&format!("special step {k} on the host\n")),
            }
        }
        out
    }

    /// Run on `client` with the batch's inputs (flat, f32 or f64, as for
    /// [`Plan::run`]); returns the outputs as [`Plan::run`] does.
    pub fn run(
        &self,
        client: &Client,
        sh: &Shape,
        inputs: &impl Inputs,
    ) -> Result<keel_ir::Outputs, String> {
        let mut on = self.upload(client, sh, inputs)?;
        self.execute(client, &mut on)?;
        self.download(client, on)
    }

    /// Where each slot starts in the arena, and the arena's length
    /// (values).
    fn layout(&self, sh: &Shape) -> (Vec<usize>, usize) {
        let mut offsets = Vec::with_capacity(self.slots.len());
        let mut total = 0usize;
        for l in &self.slots {
            offsets.push(total);
            total += sh.len(*l).max(1);
        }
        (offsets, total)
    }

    /// The arena's size for a batch of shape `sh`, in bytes (f32): the one
    /// device buffer [`Self::upload`] allocates.
    pub fn arena_bytes(&self, sh: &Shape) -> usize {
        self.layout(sh).1 * std::mem::size_of::<f32>()
    }

    /// Lay out the arena and copy the inputs to the device (converted to
    /// f32 as they are laid out: no other copy is made).
    pub fn upload(
        &self,
        client: &Client,
        sh: &Shape,
        inputs: &impl Inputs,
    ) -> Result<OnDevice, String> {
        let mask = inputs
            .view("mask")
            .ok_or_else(|| "input `mask` was not provided".to_string())?;
        if mask.len() != sh.b * sh.t {
            return Err(format!(
                "input `mask` has {} values, expected {}",
                mask.len(),
                sh.b * sh.t
            ));
        }
        let (offsets, total) = self.layout(sh);
        if total >= u32::MAX as usize {
            return Err(format!("{total} values do not fit a 32-bit indexed arena"));
        }
        crate::fits(
            client,
            total * std::mem::size_of::<f32>(),
            "the batch",
            "run a smaller batch, or the `kernel` backend",
        )?;
        let mut host = vec![0.0f32; total];
        for (k, b) in self.plan.buffers.iter().enumerate() {
            if let Some(name) = &b.input {
                let x = inputs
                    .view(name)
                    .ok_or_else(|| format!("input `{name}` was not provided"))?;
                if x.len() != sh.len(b.level) {
                    return Err(format!(
                        "input `{name}` has {} values, expected {}",
                        x.len(),
                        sh.len(b.level)
                    ));
                }
                lay_out(&mut host[offsets[k]..offsets[k] + x.len()], x);
            }
        }
        lay_out(
            &mut host[offsets[self.mask_slot]..offsets[self.mask_slot] + mask.len()],
            mask,
        );
        if let Some(ts) = self.tokens_slot {
            let tokens = inputs.view("tokens").ok_or_else(|| {
                "`tokens` is needed to read the sampled token's entry".to_string()
            })?;
            if tokens.len() != sh.b * sh.t {
                return Err(format!(
                    "input `tokens` has {} values, expected {}",
                    tokens.len(),
                    sh.b * sh.t
                ));
            }
            if let Some((i, t)) = tokens
                .iter()
                .enumerate()
                .find(|(_, t)| !(*t >= 0.0 && t.fract() == 0.0 && (*t as usize) < sh.v))
            {
                return Err(format!(
                    "`tokens` at flat position {i} is {t}, outside the vocabulary [0, {})",
                    sh.v
                ));
            }
            lay_out(&mut host[offsets[ts]..offsets[ts] + tokens.len()], tokens);
        }
        for (slot, seed) in &self.rands {
            let seed = match *seed {
                Seed::Const(c) => c,
                Seed::Host(id) => host_value(&self.plan.graph, id, inputs, sh)?,
            };
            let n = sh.len(self.slots[*slot]);
            for (i, o) in host[offsets[*slot]..offsets[*slot] + n]
                .iter_mut()
                .enumerate()
            {
                *o = ops::uniform(seed, i) as f32;
            }
        }
        let lens = Level::ALL.map(|l| sh.len(l) as u32);
        let mut meta: Vec<u32> = lens.to_vec();
        meta.extend([sh.b as u32, sh.t as u32, sh.v as u32, sh.n_groups as u32]);
        meta.extend(offsets.iter().map(|&o| o as u32));
        let groups = group_table(&sh.group_of, sh.n_groups);
        // Launch shapes from the runtime's limits. (The reductions use plane
        // operations; cubecl's wgpu runtime does not list them among
        // lavapipe's features although they compile and run there, so a
        // runtime without them surfaces as a kernel compilation error.)
        let props = client.properties();
        let dim = props.hardware.max_units_per_cube.clamp(1, 256);
        Ok(OnDevice {
            dim,
            arena: client.create_from_slice(f32::as_bytes(&host)),
            meta: client.create_from_slice(u32::as_bytes(&meta)),
            groups: client.create_from_slice(u32::as_bytes(&groups)),
            meta_len: meta.len(),
            groups_len: groups.len(),
            total,
            offsets,
            shape: sh.clone(),
            mask: mask.iter().map(|x| x as f32).collect(),
            tokens: inputs.view("tokens").map(|t| t.iter().collect()),
        })
    }

    /// Launch every kernel (and run the special steps) and wait for the
    /// device to finish.
    pub fn execute(&self, client: &Client, on: &mut OnDevice) -> Result<(), String> {
        let sh = on.shape.clone();
        let plane = crate::width(client);
        let arg = |h: &cubecl::server::Handle, n: usize| {
            // SAFETY (for the launches below): every index a kernel touches
            // is below the lengths in `meta`, which describe these buffers.
            unsafe { TensorArg::from_raw_parts(h.clone(), [1].into(), [n].into()) }
        };
        // Each hop of a merged launch keeps two values per plane in shared
        // memory; at most eight hops a launch (code size).
        let planes = crate::planes_per_cube(client, 1024);
        let shared = client.properties().hardware.max_shared_memory_size;
        let max_run = (shared / (8 * planes as usize)).clamp(1, 8);
        for launch in batch_hop_runs(&self.steps, max_run) {
            let st = match launch {
                Launch::One(st) => st,
                Launch::BatchHops(hops) => {
                    let hops: Vec<(HopCfg, u32)> = hops
                        .into_iter()
                        .map(|h| (h.clone(), neutral(h.red).to_bits()))
                        .collect();
                    unsafe {
                        batch_hops_kernel::launch_unchecked(
                            client,
                            CubeCount::Static(hops.len() as u32, 1, 1),
                            CubeDim::new_2d(plane, planes),
                            arg(&on.arena, on.total),
                            arg(&on.meta, on.meta_len),
                            arg(&on.groups, on.groups_len),
                            hops,
                            planes as usize,
                        )
                    };
                    continue;
                }
            };
            match st {
                DStep::Loop(cfg) if matches!(cfg.level, Level::Token | Level::Vocab) => {
                    let rows = sh.len(if cfg.level == Level::Vocab {
                        Level::Token
                    } else {
                        Level::Seq
                    }) as u32;
                    if rows == 0 || sh.len(cfg.level) == 0 {
                        continue;
                    }
                    unsafe {
                        row_kernel::launch_unchecked(
                            client,
                            crate::row_cubes(client, rows as usize),
                            crate::row_dim(client),
                            arg(&on.arena, on.total),
                            arg(&on.meta, on.meta_len),
                            arg(&on.groups, on.groups_len),
                            cfg.clone(),
                        )
                    };
                }
                DStep::Loop(cfg) => {
                    let n = sh.len(cfg.level);
                    if n == 0 {
                        continue;
                    }
                    let dim = on.dim;
                    let cubes = n.div_ceil(dim as usize) as u32;
                    let (x, y) = (cubes.min(65_535), cubes.div_ceil(65_535));
                    unsafe {
                        loop_kernel::launch_unchecked(
                            client,
                            CubeCount::Static(x, y, 1),
                            CubeDim::new_1d(dim),
                            arg(&on.arena, on.total),
                            arg(&on.meta, on.meta_len),
                            arg(&on.groups, on.groups_len),
                            cfg.clone(),
                        )
                    };
                }
                DStep::Hop(h) => {
                    let units = sh.len(h.to).max(1) as u32;
                    let (x, y) = (units.min(65_535), units.div_ceil(65_535));
                    // One unit (the batch): a wide cube; else one plane each.
                    let planes = if h.to <= Level::Batch { planes } else { 1 };
                    unsafe {
                        hop_kernel::launch_unchecked(
                            client,
                            CubeCount::Static(x, y, 1),
                            CubeDim::new_2d(plane, planes),
                            arg(&on.arena, on.total),
                            arg(&on.meta, on.meta_len),
                            arg(&on.groups, on.groups_len),
                            h.clone(),
                            neutral(h.red).to_bits(),
                            planes as usize,
                        )
                    };
                }
                DStep::Scan(cfg) => {
                    let rows = sh.b as u32;
                    if rows == 0 || sh.t == 0 {
                        continue;
                    }
                    let dim = on.dim.min(64);
                    let cubes = rows.div_ceil(dim);
                    let (x, y) = (cubes.min(65_535), cubes.div_ceil(65_535));
                    unsafe {
                        scan_kernel::launch_unchecked(
                            client,
                            CubeCount::Static(x, y, 1),
                            CubeDim::new_1d(dim),
                            arg(&on.arena, on.total),
                            arg(&on.meta, on.meta_len),
                            arg(&on.groups, on.groups_len),
                            cfg.clone(),
                        )
                    };
                }
                DStep::Select(cfg) => self.select(client, on, cfg, plane)?,
                DStep::Keyed(cfg) => self.keyed(client, on, cfg)?,
                DStep::Gather(cfg) => {
                    let n = sh.len(if cfg.onehot {
                        Level::Vocab
                    } else {
                        Level::Token
                    });
                    if n == 0 {
                        continue;
                    }
                    unsafe {
                        gather_kernel::launch_unchecked(
                            client,
                            grid(n, on.dim),
                            CubeDim::new_1d(on.dim),
                            arg(&on.arena, on.total),
                            arg(&on.meta, on.meta_len),
                            arg(&on.groups, on.groups_len),
                            cfg.clone(),
                        )
                    };
                }
                DStep::Special(k) => {
                    let Step::Special(sp) = &self.plan.steps[*k] else {
                        return Err("internal: not a special step".into());
                    };
                    let bytes = client
                        .read_one(on.arena.clone())
                        .map_err(|e| e.to_string())?;
                    let now = f32::from_bytes(&bytes).to_vec();
                    // Only the buffers the step reads, as f64 (the others
                    // stay empty: a vocabulary-level arena is gigabytes).
                    let reads = |k: usize| sp.args.contains(&Src::Buf(k));
                    let bufs: Vec<Vec<f64>> = self
                        .plan
                        .buffers
                        .iter()
                        .enumerate()
                        .map(|(k, b)| {
                            if !reads(k) {
                                return Vec::new();
                            }
                            now[on.offsets[k]..on.offsets[k] + sh.len(b.level)]
                                .iter()
                                .map(|&x| x as f64)
                                .collect()
                        })
                        .collect();
                    let out = self
                        .plan
                        .eval_special(sp, &sh, &on.mask, on.tokens.as_deref(), &bufs)
                        .map_err(|e| e.0)?;
                    let mut next = now;
                    let o = on.offsets[sp.buf];
                    for (d, x) in next[o..o + out.len()].iter_mut().zip(out) {
                        *d = x as f32;
                    }
                    on.arena = client.create_from_slice(f32::as_bytes(&next));
                }
            }
        }
        cubecl::future::block_on(client.sync()).map_err(|e| e.to_string())
    }

    /// A keyed statistic: keys, a bitonic sort, one unit per run of keys.
    fn keyed(&self, client: &Client, on: &OnDevice, cfg: &KeyedCfg) -> Result<(), String> {
        let n = on.shape.len(cfg.level);
        if n == 0 {
            return Ok(());
        }
        let n_pad = n.next_power_of_two();
        let units = client.empty(n_pad * 4);
        let vals = client.empty(n_pad * 4);
        let idx = client.empty(n_pad * 4);
        unsafe {
            keyed_keys_kernel::launch_unchecked(
                client,
                grid(n_pad, on.dim),
                CubeDim::new_1d(on.dim),
                raw(&on.arena, on.total),
                raw(&on.meta, on.meta_len),
                raw(&on.groups, on.groups_len),
                raw(&units, n_pad),
                raw(&vals, n_pad),
                raw(&idx, n_pad),
                n_pad,
                cfg.clone(),
            )
        };
        bitonic_sort(client, &units, &vals, &idx, n_pad, on.dim);
        unsafe {
            keyed_out_kernel::launch_unchecked(
                client,
                grid(n_pad, on.dim),
                CubeDim::new_1d(on.dim),
                raw(&on.arena, on.total),
                raw(&on.meta, on.meta_len),
                raw(&on.groups, on.groups_len),
                raw(&units, n_pad),
                raw(&vals, n_pad),
                raw(&idx, n_pad),
                n_pad,
                cfg.clone(),
            )
        };
        Ok(())
    }

    /// A selection: keys, a bitonic sort, unit bounds, the result.
    fn select(
        &self,
        client: &Client,
        on: &OnDevice,
        cfg: &SelCfg,
        _plane: u32,
    ) -> Result<(), String> {
        let sh = &on.shape;
        let n = sh.len(cfg.level);
        if n == 0 {
            return Ok(());
        }
        let n_pad = n.next_power_of_two();
        let n_units = sh.len(cfg.over).max(1);
        let units = client.empty(n_pad * 4);
        let vals = client.empty(n_pad * 4);
        let idx = client.empty(n_pad * 4);
        let zeros = vec![0u32; n_units];
        let start = client.create_from_slice(u32::as_bytes(&zeros));
        let end = client.create_from_slice(u32::as_bytes(&zeros));
        let (arg, dim) = (raw, on.dim);
        unsafe {
            sel_keys_kernel::launch_unchecked(
                client,
                grid(n_pad, dim),
                CubeDim::new_1d(dim),
                arg(&on.arena, on.total),
                arg(&on.meta, on.meta_len),
                arg(&on.groups, on.groups_len),
                arg(&units, n_pad),
                arg(&vals, n_pad),
                arg(&idx, n_pad),
                n_pad,
                cfg.clone(),
            )
        };
        bitonic_sort(client, &units, &vals, &idx, n_pad, on.dim);
        unsafe {
            sel_bounds_kernel::launch_unchecked(
                client,
                grid(n_pad, dim),
                CubeDim::new_1d(dim),
                arg(&units, n_pad),
                arg(&start, n_units),
                arg(&end, n_units),
                n_pad,
            )
        };
        let threads = if cfg.kind == SelKind::Rank {
            n_pad
        } else {
            n_units
        };
        unsafe {
            sel_out_kernel::launch_unchecked(
                client,
                grid(threads, dim),
                CubeDim::new_1d(dim),
                arg(&on.arena, on.total),
                arg(&on.meta, on.meta_len),
                arg(&on.groups, on.groups_len),
                arg(&units, n_pad),
                arg(&vals, n_pad),
                arg(&idx, n_pad),
                arg(&start, n_units),
                arg(&end, n_units),
                n_pad,
                cfg.clone(),
            )
        };
        Ok(())
    }

    /// Copy the outputs back (f64).
    pub fn download(&self, client: &Client, on: OnDevice) -> Result<keel_ir::Outputs, String> {
        let sh = &on.shape;
        let bytes = client.read_one(on.arena).map_err(|e| e.to_string())?;
        let all = f32::from_bytes(&bytes);
        let mut out = HashMap::new();
        for (name, src, level) in &self.plan.outputs {
            let n = sh.len(*level);
            let v: Vec<f64> = match src {
                // A vocabulary-level output (`d_logits`) stays f32, as the
                // CPU plan hands it over.
                Src::Buf(b) if self.slots[*b] == Level::Vocab => {
                    let o = on.offsets[*b];
                    let x = all[o..o + sh.len(Level::Vocab)].to_vec();
                    out.insert(name.clone(), Values::F32(x));
                    continue;
                }
                Src::Buf(b) => all[on.offsets[*b]..on.offsets[*b] + sh.len(self.slots[*b])]
                    .iter()
                    .map(|&x| x as f64)
                    .collect(),
                Src::Const(c) => vec![*c; n],
                Src::PaddedLength => vec![sh.t as f64; n],
                Src::VocabIndex => (0..n).map(|i| (i % sh.v.max(1)) as f64).collect(),
                Src::Reg(_) => return Err(format!("internal: output `{name}` in a register")),
            };
            out.insert(name.clone(), Values::F64(v));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{DStep, HopCfg, Launch, batch_hop_runs, group_table};
    use keel_check::builtins::Level;
    use keel_ir::ir::Red;

    fn hop(to: Level, src: usize, dst: usize) -> DStep {
        DStep::Hop(HopCfg {
            red: Red::Sum,
            from: Level::Seq,
            to,
            src: (src, src + 1),
            dst: (dst, dst + 1),
            finalize: false,
        })
    }

    /// Consecutive independent hops to the batch share a launch; a hop that
    /// reads what one of the run writes, a hop to another level, the cap,
    /// and any other step each end a run; a lone hop stays a step.
    #[test]
    fn batch_hops_merge_only_when_independent() {
        let steps = [
            hop(Level::Batch, 0, 10),
            hop(Level::Batch, 2, 12),
            hop(Level::Batch, 10, 14), // reads the first hop's result
            hop(Level::Group, 4, 16),
            hop(Level::Batch, 6, 18),
            hop(Level::Batch, 20, 22),
            hop(Level::Batch, 24, 26),
            hop(Level::Batch, 28, 30), // past the cap of 3
        ];
        let shape: Vec<String> = batch_hop_runs(&steps, 3)
            .iter()
            .map(|l| match l {
                Launch::One(_) => "one".to_string(),
                Launch::BatchHops(h) => format!("batch x{}", h.len()),
            })
            .collect();
        assert_eq!(shape, ["batch x2", "one", "one", "batch x3", "one"]);
    }

    #[test]
    fn group_table_lists_members_group_by_group() {
        // Sequences of groups 1, 0, 1, 2, 0 (interleaved, as a batch may be).
        let t = group_table(&[1, 0, 1, 2, 0], 3);
        assert_eq!(t, [1, 0, 1, 2, 0, 0, 2, 4, 5, 1, 4, 0, 2, 3]);
        // One group, no sequences: still a non-empty table.
        assert_eq!(group_table(&[], 1), [0, 0]);
    }
}
