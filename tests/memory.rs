//! `kernel::Plan::memory_bytes` — the estimate `keel loss --backend kernel`
//! refuses an oversized batch by (E0606) — against what a run allocates,
//! counted by this binary's allocator: it must not overstate the run's
//! peak, and must account for most of it, for token-level, vocabulary-level
//! and sorting recipes.

use keel_compiler::batch::Batch;
use keel_compiler::kernel::Plan;
use keel_compiler::synth::{self, Dims};
use keel_tests::{check_file, preset_path};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = NOW.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new >= l.size() {
            grew(new - l.size());
        } else {
            NOW.fetch_sub(l.size() - new, Ordering::SeqCst);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counters are the process's: one measurement at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `f`'s result and the peak bytes it allocated beyond what was allocated
/// before it.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = NOW.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - before)
}

/// A stdlib recipe (checked, its index) and a synthetic batch for it.
fn recipe_and_batch(name: &str, d: Dims, seed: u64) -> (keel_compiler::Checked, usize, Batch) {
    let c = check_file(&preset_path(name), &[]);
    let idx = c.main_recipe(None).expect("recipe");
    let batch = synth::batch(&c.recipes[idx], d, seed);
    (c, idx, batch)
}

/// Record an estimate against a counted peak: it must not overstate it,
/// and must account for at least 90 % of it.
fn from_below(report: &mut Vec<String>, name: &str, est: usize, peak: usize) {
    report.push(format!("{name}: estimate {est}, peak {peak}"));
    assert!(
        est <= peak && est as f64 >= 0.9 * peak as f64,
        "{}",
        report.join("\n")
    );
}

/// Peak bytes allocated by one run of the training plan of `name` beyond
/// what was allocated before it, and the plan's estimate.
fn measure(name: &str, d: Dims) -> (usize, usize) {
    let (c, idx, batch) = recipe_and_batch(name, d, 5);
    let recipe = &c.recipes[idx];
    let have = |n: &str| batch.has(n);
    let mut compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
    compiled.graph.keep_training_outputs();
    let prepared =
        keel_compiler::batch::prepare(&batch, "b", &compiled.graph, recipe).expect("batch fits");
    let inputs = prepared.inputs_f32();
    let plan = Plan::new(&compiled.graph).expect("plan");
    let estimate = plan.memory_bytes(&prepared.shape);
    // One thread: the peak then does not depend on how threads interleave
    // their scratch allocations.
    let (out, peak) = counted(|| plan.run(&prepared.shape, &inputs, 1).expect("runs"));
    drop(out);
    (estimate, peak)
}

#[test]
fn memory_estimate_bounds_a_run_from_below() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Large enough that the [B, T(, V)] values dominate the small
    // allocations of a run.
    let token = Dims {
        b: 512,
        t: 256,
        v: 0,
        group: 8,
    };
    let vocab = Dims {
        b: 32,
        t: 64,
        v: 512,
        group: 8,
    };
    let mut report = Vec::new();
    for (name, d) in [
        ("grpo", token),
        ("ppo", token),
        ("pure", token),
        ("z_loss", vocab),
        ("pld", vocab),
        ("siren", vocab),
        ("lp_reg", vocab),
    ] {
        let (est, peak) = measure(name, d);
        from_below(&mut report, name, est, peak);
    }
    eprintln!("{}", report.join("\n"));
}

/// `keel loss --backend kernel` on a batch already read: the [B, T, V]
/// logits are read where the batch holds them (f32), never copied. Beyond
/// the gradient it returns (GRPO: the logits kernel's f32 `d_logits`) or the
/// plan's own values (z-loss, a vocabulary-level program: its estimate,
/// its f32 `d_logits` included), a run allocates less than 512 bytes a
/// token. A copy of the logits (4 or 8 bytes an entry, 16 or 32 KB a token
/// here) fails it.
#[test]
fn a_loss_reads_the_logits_in_place() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Dims {
        b: 16,
        t: 64,
        v: 4096,
        group: 8,
    };
    let (n, nv) = (d.b * d.t, d.b * d.t * d.v);
    let mut report = Vec::new();
    for name in ["grpo", "z_loss"] {
        let (c, idx, batch) = recipe_and_batch(name, d, 9);
        let recipe = &c.recipes[idx];
        assert!(
            matches!(
                batch.tensors["logits"].data,
                keel_compiler::batch::Values::F32(_)
            ),
            "{name}: logits held as f32"
        );
        // What the program's plan holds (z-loss); GRPO's program is
        // token-level once the logits kernel has run.
        let allowed = if name == "grpo" {
            4 * nv
        } else {
            let have = |x: &str| batch.has(x);
            let mut compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
            compiled.graph.keep_training_outputs();
            let p = keel_compiler::batch::prepare(&batch, "b", &compiled.graph, recipe)
                .expect("batch fits");
            Plan::new(&compiled.graph)
                .expect("plan")
                .memory_bytes(&p.shape)
        };
        let kernel = keel_compiler::Backend::Kernel { threads: 1 };
        let (r, peak) = counted(|| keel_compiler::run_loss_with(&c, idx, &batch, "b", kernel));
        let r = r.unwrap_or_else(|e| panic!("{name}: {}", e[0].message));
        assert_eq!(r.d_logits.as_ref().map(|x| x.len()), Some(nv), "{name}");
        // Both the logits kernel and a vocabulary-level plan hand over an
        // f32 gradient.
        assert!(
            matches!(r.d_logits, Some(keel_compiler::batch::Values::F32(_))),
            "{name}: d_logits held as f32"
        );
        report.push(format!(
            "{name}: peak {peak}, allowed {allowed} + {}",
            512 * n
        ));
        assert!(peak <= allowed + 512 * n, "{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
}

/// `keel loss` with the reference interpreter refuses a batch by
/// `interp::memory_bytes` (E0606): it must not overstate what a run
/// allocates, and must account for most of it.
#[test]
fn interpreter_estimate_bounds_a_run_from_below() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Dims {
        b: 16,
        t: 32,
        v: 256,
        group: 8,
    };
    let mut report = Vec::new();
    for name in ["grpo", "ppo", "z_loss", "pld", "siren"] {
        let (c, idx, batch) = recipe_and_batch(name, d, 3);
        let recipe = &c.recipes[idx];
        let have = |x: &str| batch.has(x);
        let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
        let p = keel_compiler::batch::prepare(&batch, "b", &compiled.graph, recipe)
            .expect("batch fits");
        let est = keel_compiler::interp::memory_bytes(&compiled.graph, &p.shape);
        let (r, peak) = counted(|| keel_compiler::run_loss(&c, idx, &batch, "b"));
        r.unwrap_or_else(|e| panic!("{name}: {}", e[0].message));
        from_below(&mut report, name, est, peak);
    }
    eprintln!("{}", report.join("\n"));
}
