//! Ranks and running sums within each token's vocabulary: every row put in
//! key order natively (by counting for short rows, a stable sort for long
//! ones), rows across threads in fixed parts.

use super::PARTS;
use super::exec::Pool;
use keel_ir::batch::View;

/// Run `work(first_row, rows)` over `out` split into [`PARTS`] fixed parts of
/// whole rows of `row` entries, on up to `threads` threads at a time (the
/// split does not depend on the thread count).
pub(super) fn par_rows<T: Send>(
    out: &mut [T],
    row: usize,
    threads: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let rows = out.len() / row.max(1);
    let per_rows = rows.div_ceil(PARTS).max(1);
    let mut pending: Vec<(usize, &mut [T])> = out
        .chunks_mut(per_rows * row.max(1))
        .enumerate()
        .map(|(c, ch)| (c * per_rows, ch))
        .collect();
    let work = &work;
    while !pending.is_empty() {
        let rest = pending.split_off(pending.len().min(threads.max(1)));
        let wave = std::mem::replace(&mut pending, rest);
        std::thread::scope(|scope| {
            for (first, ch) in wave {
                scope.spawn(move || work(first, ch));
            }
        });
    }
}

/// Rows up to this long are ordered by counting (every pair compared,
/// branch-free and vectorised), longer ones by sorting.
const COUNT_ROW: usize = 128;

/// The order of one row's entries: key descending, ties to the lower index
/// (the interpreter's order), as indices into the row.
fn row_order(k: &[f64], keys: &mut Vec<i64>, idx: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { row_order_avx2(k, keys, idx) };
    }
    row_order_body(k, keys, idx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_order_avx2(k: &[f64], keys: &mut Vec<i64>, idx: &mut [u32]) {
    row_order_body(k, keys, idx)
}

#[inline(always)]
fn row_order_body(k: &[f64], keys: &mut Vec<i64>, idx: &mut [u32]) {
    // f64::total_cmp's order as bits, inverted so that ascending integers
    // are descending keys.
    keys.clear();
    keys.extend(k.iter().map(|x| {
        let b = x.to_bits();
        let t = if b >> 63 == 1 { !b } else { b | (1 << 63) };
        (!t ^ (1 << 63)) as i64
    }));
    if k.len() <= COUNT_ROW {
        // Entry i's place: the entries before it in the order (smaller
        // integers, or equal ones at a lower index).
        for (i, &ki) in keys.iter().enumerate() {
            let mut place = 0u64;
            for &kj in keys.iter() {
                place += u64::from(kj < ki);
            }
            for &kj in &keys[..i] {
                place += u64::from(kj == ki);
            }
            if let Some(o) = idx.get_mut(place as usize) {
                *o = i as u32;
            }
        }
        return;
    }
    // A stable sort keeps ties in index order.
    let mut pairs: Vec<(i64, u32)> = keys
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, i as u32))
        .collect();
    pairs.sort_by_key(|e| e.0);
    for (o, key) in idx.iter_mut().zip(&pairs) {
        *o = key.1;
    }
}

/// Row `base..base + v` of `x` as f64: in place, or converted into
/// `scratch`.
fn row<'s>(x: View<'s>, base: usize, v: usize, scratch: &'s mut Vec<f64>) -> &'s [f64] {
    match x {
        View::F64(s) => &s[base..base + v],
        other => {
            scratch.resize(v, 0.0);
            other.widen(base, scratch);
            scratch
        }
    }
}

/// Every row's order ([`row_order`]), rows of `v` entries.
pub(super) fn vocab_orders(v: usize, key: View, threads: usize, pool: &Pool<u32>) -> Vec<u32> {
    let mut order = pool.take(key.len());
    par_rows(&mut order, v, threads, |first, chunk| {
        let (mut keys, mut scratch) = (Vec::with_capacity(v), Vec::new());
        for (r, idx) in chunk.chunks_mut(v).enumerate() {
            let base = (first + r) * v;
            row_order(row(key, base, v, &mut scratch), &mut keys, idx);
        }
    });
    order
}

/// One rank or running-sum step over rows of `v` entries, in each row's
/// key order (from `order` if given, else sorted here): the rank of each
/// entry (`sum` is `None`) or the running sum of `x` in that order
/// (`Some(reverse)`: from the other end). `key` and `x` are read where they
/// are, widened a row at a time.
pub(super) struct Rows<'a> {
    pub v: usize,
    pub key: View<'a>,
    pub x: View<'a>,
    pub sum: Option<bool>,
    pub order: Option<&'a [u32]>,
    pub threads: usize,
}

/// Where a result entry is stored: f64, or f32 for a vocabulary-level
/// buffer (the running sum itself is f64).
pub(super) trait Slot: Copy + Send {
    fn of(x: f64) -> Self;
}

impl Slot for f64 {
    fn of(x: f64) -> f64 {
        x
    }
}

impl Slot for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
}

/// Evaluate `r` into `out` (one entry per row entry; every entry is
/// written).
pub(super) fn vocab_rows<T: Slot>(r: &Rows, out: &mut [T]) {
    let (v, key, x) = (r.v, r.key, r.x);
    par_rows(out, v, r.threads, |first, chunk| {
        let (mut keys, mut scratch, mut xs) = (Vec::with_capacity(v), Vec::new(), Vec::new());
        let mut own = vec![0u32; v];
        for (k, orow) in chunk.chunks_mut(v).enumerate() {
            let base = (first + k) * v;
            let idx: &[u32] = match r.order {
                Some(o) => &o[base..base + v],
                None => {
                    row_order(row(key, base, v, &mut scratch), &mut keys, &mut own);
                    &own
                }
            };
            match r.sum {
                None => {
                    for (p, &i) in idx.iter().enumerate() {
                        orow[i as usize] = T::of(p as f64);
                    }
                }
                Some(reverse) => {
                    let xr = row(x, base, v, &mut xs);
                    let mut acc = 0.0;
                    let mut add = |i: u32| {
                        acc += xr[i as usize];
                        orow[i as usize] = T::of(acc);
                    };
                    if reverse {
                        idx.iter().rev().for_each(|&i| add(i));
                    } else {
                        idx.iter().for_each(|&i| add(i));
                    }
                }
            }
        }
    });
}
