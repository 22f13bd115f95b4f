//! End-to-end tests of the `keel` binary: exit codes, the plain error line,
//! JSON output, `explain` and `fmt --check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("keel runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_recipe(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-cli-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write temp recipe");
    p
}

#[test]
fn check_passes_on_stdlib_and_examples() {
    let mut files: Vec<String> = Vec::new();
    for dir in ["stdlib", "examples"] {
        for e in std::fs::read_dir(root().join(dir)).expect("dir").flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".recipe") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(|s| s.as_str()))
        .collect();
    let out = keel(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_fails_with_plain_lines_and_never_panics() {
    let p = temp_recipe(
        "bad.recipe",
        "import std/grpo\nrecipe r extends grpo {\n    credit = mean(rewrd) over group\n}\n",
    );
    let ps = p.to_string_lossy().to_string();
    let out = keel(&["check", "--color", "never", &ps]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{ps}:3:19: error[E0100]: cannot find `rewrd`")),
        "{err}"
    );
    assert!(err.contains("Help: did you mean `reward`?"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn warnings_exit_zero() {
    let p = temp_recipe(
        "warn.recipe",
        "import std/grpo\nrecipe r extends grpo { clip.eps_hgh = 0.3 }\n",
    );
    let out = keel(&["check", "--error-format", "short", &p.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("warning[W0002]"));
}

#[test]
fn json_error_format() {
    let p = temp_recipe("json.recipe", "recipe r { objective.loss = logp * eps }\n");
    let out = keel(&["check", "--error-format", "json", &p.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_str(text(&out.stdout).trim()).expect("one JSON object");
    assert_eq!(v["errors"], 1);
    assert_eq!(v["diagnostics"][0]["code"], "E0100");
    assert_eq!(v["diagnostics"][0]["primary"]["line"], 1);
    assert_eq!(v["diagnostics"][0]["primary"]["column"], 36);
    assert_eq!(v["recipes"][0]["inputs"][0], "logp");
}

#[test]
fn missing_file_is_a_located_error() {
    let out = keel(&["check", "no/such.recipe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("no/such.recipe:1:1: error[E0101]"));
}

#[test]
fn explain_prints_the_index_entry() {
    let out = keel(&["explain", "E0202"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("## E0202: value is finer than its context allows"));
    let out = keel(&["explain", "E9999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a Keel error code"));
}

#[test]
fn fmt_check_and_write() {
    let p = temp_recipe("fmt.recipe", "recipe r{objective.loss=-logp}\n");
    let ps = p.to_string_lossy().to_string();
    let out = keel(&["fmt", "--check", &ps]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("would be reformatted"));
    let out = keel(&["fmt", &ps]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&p).unwrap_or_default(),
        "recipe r {\n    objective.loss = -logp\n}\n"
    );
    assert!(keel(&["fmt", "--check", &ps]).status.success());
    let broken = temp_recipe("broken.recipe", "recipe r { objective.loss = }\n");
    let out = keel(&["fmt", &broken.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap_or_default(),
        "recipe r { objective.loss = }\n"
    );
}

#[test]
fn loss_json_and_grad_out() {
    let grad = std::env::temp_dir().join(format!("keel-grad-{}.safetensors", std::process::id()));
    let gs = grad.to_string_lossy().to_string();
    let out = keel(&[
        "loss",
        "stdlib/dapo.recipe",
        "--batch",
        "tests/golden/dapo__binary.safetensors",
        "--json",
        "--grad-out",
        &gs,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
    assert_eq!(v["backend"], "interp");
    assert_eq!(v["recipe"], "dapo");
    assert!(
        (v["loss"].as_f64().unwrap_or(0.0) - -0.049675508).abs() < 1e-8,
        "{v}"
    );
    for m in ["clip_frac", "approx_kl", "entropy"] {
        assert!(v["metrics"][m].is_number(), "metric {m}: {v}");
    }
    let bytes = std::fs::read(&grad).expect("grad file written");
    let g = keel_compiler::batch::Batch::from_bytes(&bytes).expect("safetensors");
    assert_eq!(g.tensors["d_logp"].shape, vec![16, 24]);
    assert_eq!(g.tensors["advantages"].shape, vec![16, 24]);
    assert_eq!(g.tensors["d_logp"].dtype, "f32");
}

/// What `keel loss` cannot hold in the memory available is refused with
/// E0606 before it is allocated (the limit set by hand here): a batch file
/// whose tensors do not fit (located at the file), the kernel plan's values
/// or the reference interpreter's (the default backend; located at the
/// recipe). Under the limit the same commands run.
#[test]
fn loss_beyond_memory_is_an_error() {
    // PLD at 8 × 16 positions × V = 1,024 (logits and teacher logits):
    // reading the file takes ~2 MB (16 bytes an entry), the kernel plan
    // ~2.6 MB (~20), the interpreter tens of MB. The limit is set just
    // above what reading takes.
    let path = root().join("stdlib/pld.recipe");
    let src = std::fs::read_to_string(&path).expect("pld");
    let c = keel_compiler::check_source(&keel_compiler::Disk, &path.to_string_lossy(), &src);
    let idx = c.main_recipe(None).expect("recipe");
    let d = keel_compiler::synth::Dims {
        b: 8,
        t: 16,
        v: 1024,
        group: 4,
    };
    let batch_path = std::env::temp_dir().join(format!("keel-mem-{}.st", std::process::id()));
    let bytes = keel_compiler::synth::batch(&c.recipes[idx], d, 1)
        .to_bytes()
        .expect("serialises");
    std::fs::write(&batch_path, &bytes).expect("writes");
    let batch = batch_path.to_string_lossy().to_string();
    let read =
        keel_compiler::batch::bytes_to_read(bytes.as_slice(), bytes.len()).expect("a header");
    let plan_need = {
        let b = keel_compiler::synth::batch(&c.recipes[idx], d, 1);
        let have = |n: &str| b.has(n);
        let g = keel_compiler::compile_loss(&c, idx, &have)
            .expect("compiles")
            .graph;
        let p = keel_compiler::batch::prepare(&b, "b", &g, &c.recipes[idx]).expect("fits");
        keel_compiler::kernel::Plan::new(&g)
            .expect("plan")
            .memory_bytes(&p.shape)
    };
    assert!(plan_need > read + 100_000, "plan {plan_need}, read {read}");
    let above_read = (read + 50_000).to_string();
    let run = |backend: &str, limit: &str| {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["loss", "stdlib/pld.recipe", "--batch", &batch])
            .args(["--backend", backend])
            .env("KEEL_MEMORY_LIMIT", limit)
            .current_dir(root())
            .output()
            .expect("keel runs")
    };
    for (backend, limit, want) in [
        (
            "kernel",
            "1000",
            format!("{batch}:1:1: error[E0606]: reading this batch's tensors would need "),
        ),
        (
            "kernel",
            above_read.as_str(),
            "error[E0606]: the kernel plan's values for this batch need ".into(),
        ),
        (
            "interp",
            above_read.as_str(),
            "error[E0606]: the reference interpreter's values for this batch need ".into(),
        ),
    ] {
        let out = run(backend, limit);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        let help = match (limit, backend) {
            ("1000", _) => "split the batch into files of fewer sequences",
            (_, "kernel") => "evaluate fewer sequences at once",
            _ => "use `--backend kernel`",
        };
        assert!(
            err.contains(&want) && err.contains("of memory is available") && err.contains(help),
            "{backend} at {limit}: {err}"
        );
    }
    for backend in ["kernel", "interp"] {
        let ok = run(backend, "1000000000");
        assert!(ok.status.success(), "{backend}: {}", text(&ok.stderr));
    }
    let _ = std::fs::remove_file(&batch_path);
    let explain = keel(&["explain", "E0606"]);
    assert!(
        explain.status.success() && text(&explain.stdout).contains("KEEL_MEMORY_LIMIT"),
        "{}",
        text(&explain.stdout)
    );
}

#[test]
fn loss_set_and_errors() {
    let base = [
        "loss",
        "stdlib/grpo.recipe",
        "--batch",
        "tests/golden/grpo__real.safetensors",
        "--json",
    ];
    let a = keel(&base);
    let mut with_set = base.to_vec();
    with_set.extend(["--set", "divergence.coef=0"]);
    let b = keel(&with_set);
    let la: serde_json::Value = serde_json::from_str(text(&a.stdout).trim()).expect("JSON");
    let lb: serde_json::Value = serde_json::from_str(text(&b.stdout).trim()).expect("JSON");
    assert_ne!(la["loss"], lb["loss"]);
    let mut bad = base.to_vec();
    bad.extend(["--set", "clip.eps_hihg=0.3"]);
    let out = keel(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("error[E0605]"),
        "{}",
        text(&out.stderr)
    );
    let out = keel(&[
        "loss",
        "stdlib/grpo.recipe",
        "--batch",
        "no/such.safetensors",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("no/such.safetensors:1:1: error[E0604]"),
        "{}",
        text(&out.stderr)
    );
    let junk = temp_recipe("junk.safetensors", "not safetensors");
    let out = keel(&[
        "loss",
        "stdlib/grpo.recipe",
        "--batch",
        &junk.to_string_lossy(),
    ]);
    assert!(text(&out.stderr).contains("error[E0604]"));
    let out = keel(&[
        "loss",
        "stdlib/grpo.recipe",
        "--batch",
        "tests/golden/grpo__real.safetensors",
        "--backend",
        "gpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown backend `gpu`"));
    assert!(text(&out.stderr).contains("help:"));
}

/// `keel loss RECIPE --batch BATCH --backend BE --json --grad-out` (the
/// gradients in `dir`): its JSON and its gradient file; `None` for a device
/// backend without a device, unless KEEL_REQUIRE_VULKAN is set.
fn loss_json_and_grads(
    recipe: &str,
    batch: &str,
    be: &str,
    dir: &std::path::Path,
) -> Option<(serde_json::Value, keel_compiler::batch::Batch)> {
    let grads = dir.join(format!("{be}.safetensors"));
    let out = keel(&[
        "loss",
        recipe,
        "--batch",
        batch,
        "--backend",
        be,
        "--json",
        "--grad-out",
        &grads.to_string_lossy(),
    ]);
    if be == "device" && !out.status.success() && std::env::var_os("KEEL_REQUIRE_VULKAN").is_none()
    {
        assert!(text(&out.stderr).contains("E0708"), "{}", text(&out.stderr));
        return None;
    }
    assert!(out.status.success(), "{be}: {}", text(&out.stderr));
    let v = serde_json::from_str(text(&out.stdout).trim()).expect("json");
    let g = keel_compiler::batch::Batch::from_bytes(&std::fs::read(&grads).expect("grads"))
        .expect("safetensors");
    Some((v, g))
}

/// `--backend kernel` (fused loops on the CPU) and `--backend device` (the
/// cubecl kernels, f32) report the interpreter's loss and gradients.
#[test]
fn loss_backends_agree() {
    let dir = std::env::temp_dir().join(format!("keel-backends-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut results = Vec::new();
    for be in ["interp", "kernel", "device"] {
        let Some((v, g)) = loss_json_and_grads(
            "stdlib/dapo.recipe",
            "tests/golden/dapo__real.safetensors",
            be,
            &dir,
        ) else {
            continue;
        };
        assert_eq!(v["backend"], be);
        results.push((
            be,
            v["loss"].as_f64().expect("loss"),
            g.tensors["d_logp"].data.to_f64(),
        ));
    }
    let (_, loss, d) = &results[0];
    let scale = d.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (be, l, dd) in &results[1..] {
        let tol = if *be == "device" { 1e-5 } else { 1e-9 };
        assert!(
            (l - loss).abs() <= tol * loss.abs().max(0.1),
            "{be}: loss {l} vs {loss}"
        );
        for (x, y) in dd.iter().zip(d) {
            assert!((x - y).abs() <= tol * scale, "{be}: d_logp {x} vs {y}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `keel loss` on a PPO batch that holds `vpred` reports the critic's
/// `value_loss` in its JSON and writes `d_vpred` with `--grad-out`, on the
/// interpreter, the CPU kernel plan and the device (lavapipe in CI): each
/// within its tolerance of verl 0.9.1's (`tests/reference/verl_critic.py`).
#[test]
fn loss_reports_the_critics_value_loss_and_d_vpred_on_every_backend() {
    let dir = std::env::temp_dir().join(format!("keel-critic-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let golden = "tests/golden/ppo_critic__real.safetensors";
    let g = keel_compiler::batch::Batch::from_bytes(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(golden),
        )
        .expect("golden"),
    )
    .expect("safetensors");
    let want = g.tensors["expect.value_loss"].data.to_f64()[0];
    let wd = g.tensors["expect.d_vpred"].data.to_f64();
    let scale = wd.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for be in ["interp", "kernel", "device"] {
        let Some((v, gb)) = loss_json_and_grads("stdlib/ppo.recipe", golden, be, &dir) else {
            continue;
        };
        let tol = if be == "interp" { 1e-9 } else { 1e-5 };
        let vl = v["value_loss"].as_f64().expect("value_loss");
        assert!(
            (vl - want).abs() <= tol * want,
            "{be}: value loss {vl} vs verl {want}"
        );
        let d = gb.tensors["d_vpred"].data.to_f64();
        assert_eq!(gb.tensors["d_vpred"].shape, vec![16, 24]);
        for (x, y) in d.iter().zip(&wd) {
            // The file is f32.
            assert!((x - y).abs() <= 1e-5 * scale, "{be}: d_vpred {x} vs {y}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_emit_ir_and_explain_file() {
    let out = keel(&["compile", "stdlib/grpo.recipe", "--emit", "ir"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("out d_logp = %"));
    // GRPO's kernels: two token passes (statistics, then the gradient)
    // around the group statistics; the gradient comes out of a buffer.
    let out = keel(&["compile", "stdlib/grpo.recipe", "--emit", "kernels"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert_eq!(
        listing.matches("for each token element").count(),
        2,
        "{listing}"
    );
    assert!(listing.contains("[group of i] +="), "{listing}");
    assert!(listing.contains("out d_logp = b"), "{listing}");
    // The same kernels as the device runtime compiles them (WGSL on Vulkan).
    let out = keel(&["compile", "stdlib/grpo.recipe", "--emit", "kernel-source"]);
    if out.status.success() {
        let src = text(&out.stdout);
        assert!(
            src.contains("row_kernel"),
            "{}",
            &src[..src.len().min(2000)]
        );
        assert!(src.contains("@compute") || src.contains("__global__"));
    } else {
        assert!(
            std::env::var_os("KEEL_REQUIRE_VULKAN").is_none(),
            "{}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("E0708"));
    }
    let out = keel(&["compile", "stdlib/grpo.recipe", "--logits"]);
    assert!(text(&out.stdout).contains("out d_logits = %"));
    let out = keel(&["explain", "stdlib/grpo.recipe"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout)
            .contains("loss = token_mean(objective.loss) + 0.001 · token_mean(divergence.value)")
    );
}

/// `keel loss` runs every recipe of every stdlib file on a batch file from
/// `tests/golden/` (with logits for the recipes that read the distribution).
#[test]
fn loss_runs_every_stdlib_recipe_on_a_batch_file() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("stdlib"))
        .expect("stdlib")
        .flatten()
    {
        let file = e.file_name().to_string_lossy().to_string();
        if !file.ends_with(".recipe") || file == "kl.recipe" {
            continue;
        }
        let path = format!("stdlib/{file}");
        let out = keel(&["check", "--error-format", "json", &path]);
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
        for r in v["recipes"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("");
            let reads_logits = r["inputs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| i.as_str().is_some_and(|s| s.ends_with("logits")));
            let batch = if reads_logits {
                "tests/golden/all_inputs_logits.safetensors"
            } else {
                "tests/golden/all_inputs.safetensors"
            };
            let out = keel(&["loss", &path, "--recipe", name, "--batch", batch, "--json"]);
            assert!(out.status.success(), "{name}: {}", text(&out.stderr));
            let res: serde_json::Value =
                serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
            assert!(
                res["loss"].as_f64().is_some_and(f64::is_finite),
                "{name}: {res}"
            );
            n += 1;
        }
    }
    assert!(n >= 40, "{n} recipes");
}

#[test]
fn compile_emit_clif() {
    let out = keel(&["compile", "examples/quickstart.recipe", "--emit", "clif"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("; host program: fn(inputs: *const f64, outputs: *mut f64)"),
        "{t}"
    );
    assert!(
        t.contains("outputs[4] = optimizer.lr") && t.contains("guard.entropy_collapse"),
        "{t}"
    );
    assert!(t.contains("inputs[0] = input step"), "{t}");
    let out = keel(&["compile", "stdlib/dapo.recipe", "--emit", "clif"]);
    assert!(text(&out.stdout).contains("; reward: fn(n: i64"));
    let out = keel(&["compile", "stdlib/grpo_lambda.recipe", "--emit", "clif"]);
    assert!(text(&out.stdout).contains("runs with the device program"));
}

/// `keel bench parity` (the device kernels against the interpreter on every
/// stdlib recipe) and `keel bench logits --device` pass on the CI runtime.
#[test]
fn bench_parity_and_device_logits() {
    let out = keel(&["bench", "parity", "--seqs", "8", "--json"]);
    if !out.status.success() && std::env::var_os("KEEL_REQUIRE_VULKAN").is_none() {
        assert!(text(&out.stderr).contains("E0708"), "{}", text(&out.stderr));
        return;
    }
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("json");
    assert!(v["runs"].as_u64().is_some_and(|n| n >= 300), "{v}");
    assert_eq!(v["recipes"].as_u64(), Some(keel_recipe_count()), "{v}");
    assert!(
        v["failures"].as_array().is_some_and(|f| f.is_empty()),
        "{v}"
    );
    assert!(
        v["largest"][0]["error"].as_f64().is_some_and(|e| e < 1e-5),
        "{v}"
    );
    assert!(v["logits_error"].as_f64().is_some_and(|e| e < 1e-5), "{v}");
    let out = keel(&[
        "bench", "logits", "--device", "--tokens", "16", "--vocab", "1000", "--iters", "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("parity with the CPU kernel on 16 rows"));
}

/// `keel bench logits` and `parity` refuse sizes beyond the machine's memory up front
/// (however large the numbers) instead of being killed.
#[test]
fn bench_logits_beyond_memory_is_refused() {
    let max = "18446744073709551615";
    let cases: [&[&str]; 3] = [
        &[
            "bench", "logits", "--tokens", "10000000", "--vocab", "151936",
        ],
        &["bench", "logits", "--tokens", max, "--vocab", "151936"],
        &["bench", "parity", "--seqs", max],
    ];
    for args in cases {
        let out = keel(args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("of memory is available"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// Recipes in the stdlib (every recipe of every file).
fn keel_recipe_count() -> u64 {
    keel_compiler::stdlib::FILES
        .iter()
        .map(|(name, text)| {
            keel_compiler::check_source(
                &keel_compiler::NoFiles,
                &format!("std/{name}.recipe"),
                text,
            )
            .recipes
            .len() as u64
        })
        .sum()
}

/// `keel export`: the package's files, `--set` in its PARAMS, and a located
/// error for a recipe that does not check.
#[test]
fn export_writes_a_torch_package_with_the_recipes_values() {
    let out = std::env::temp_dir().join(format!("keel-export-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_string_lossy().to_string();
    let r = keel(&[
        "export",
        "stdlib/grpo.recipe",
        "--out",
        &o,
        "--set",
        "clip.eps_high=0.28",
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    for f in [
        "README.md",
        "pyproject.toml",
        "keel_grpo/__init__.py",
        "keel_grpo/_keel.py",
        "keel_grpo/loss.py",
        "keel_grpo/credit.py",
        "keel_grpo/verl_adv.py",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let loss = std::fs::read_to_string(out.join("keel_grpo/loss.py")).expect("loss.py");
    assert!(loss.contains("\"clip.eps_high\": 0.28,"), "{loss}");
    assert!(loss.contains("def forward(inp, params=None, dtype=None):"));
    assert!(
        loss.contains("INPUTS = [\"entropy\", \"group\", \"logp\", \"mask\", \"old_logp\", \"ref_logp\", \"reward\"]"),
        "{loss}"
    );
    let bad = temp_recipe("bad_export", "recipe r { objective { loss = nope } }\n");
    let r = keel(&["export", &bad.to_string_lossy(), "--out", &o]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("error[E0100]"),
        "{}",
        text(&r.stderr)
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `keel export --target verl`: the package, `overrides.txt` with the
/// recipe's values (`--set` applied), an executable `run.sh`; a recipe with
/// a section verl cannot run is refused (E0802), and exported without it
/// under `--allow-partial`, which lists what it dropped.
#[test]
fn export_verl_writes_overrides_and_run_sh_and_refuses_what_verl_cannot_run() {
    let out = std::env::temp_dir().join(format!("keel-export-verl-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_string_lossy().to_string();
    let r = keel(&[
        "export",
        "stdlib/grpo.recipe",
        "--target",
        "verl",
        "--out",
        &o,
        "--set",
        "divergence.coef=0.01",
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("a registered policy loss"),
        "{}",
        text(&r.stderr)
    );
    for f in [
        "README.md",
        "pyproject.toml",
        "overrides.txt",
        "run.sh",
        "keel_grpo/__init__.py",
        "keel_grpo/loss.py",
        "keel_grpo/objective.py",
        "keel_grpo/verl_loss.py",
        "keel_grpo/verl_adv.py",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let ov = std::fs::read_to_string(out.join("overrides.txt")).expect("overrides");
    for line in [
        "algorithm.adv_estimator=keel_grpo",
        "actor_rollout_ref.actor.policy_loss.loss_mode=keel_grpo",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "actor_rollout_ref.rollout.n=8",
    ] {
        assert!(ov.lines().any(|l| l == line), "{line} not in:\n{ov}");
    }
    let sh = out.join("run.sh");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sh).expect("run.sh").permissions().mode();
        assert!(mode & 0o111 != 0, "run.sh is not executable");
    }
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&sh)
        .status();
    assert!(
        syntax.is_ok_and(|s| s.success()),
        "run.sh is not valid bash"
    );
    let init = std::fs::read_to_string(out.join("keel_grpo/__init__.py")).expect("init");
    assert!(
        init.contains("if _verl.__version__ != \"0.9.1\":"),
        "{init}"
    );

    let r = keel(&[
        "export",
        "stdlib/dapo.recipe",
        "--target",
        "verl",
        "--out",
        &o,
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("error[E0802]"),
        "{}",
        text(&r.stderr)
    );
    let r = keel(&[
        "export",
        "stdlib/dapo.recipe",
        "--target",
        "verl",
        "--allow-partial",
        "--out",
        &o,
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("dropped: the `reward` section"),
        "{}",
        text(&r.stderr)
    );
    let readme = std::fs::read_to_string(out.join("README.md")).expect("README");
    assert!(
        readme.contains("## Dropped (`--allow-partial`)"),
        "{readme}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `keel export --target trl`: the trainer subclass, `train.py` with the
/// recipe's rollout settings, and the same refusals as for verl.
#[test]
fn export_trl_writes_a_grpo_trainer_subclass_and_train_py() {
    let out = std::env::temp_dir().join(format!("keel-export-trl-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_string_lossy().to_string();
    let r = keel(&[
        "export",
        "stdlib/grpo.recipe",
        "--target",
        "trl",
        "--out",
        &o,
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("KeelGRPOTrainer"),
        "{}",
        text(&r.stderr)
    );
    for f in [
        "README.md",
        "pyproject.toml",
        "train.py",
        "keel_grpo/__init__.py",
        "keel_grpo/trainer.py",
        "keel_grpo/loss.py",
        "keel_grpo/credit.py",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(
        !out.join("keel_grpo/verl_adv.py").exists(),
        "TRL's package imports no verl"
    );
    let trainer = std::fs::read_to_string(out.join("keel_grpo/trainer.py")).expect("trainer");
    assert!(
        trainer.contains("class KeelGRPOTrainer(GRPOTrainer):"),
        "{trainer}"
    );
    assert!(
        trainer.contains("def _compute_loss(self, model, inputs):"),
        "{trainer}"
    );
    assert!(trainer.contains("CREDIT = True"), "{trainer}");
    let train = std::fs::read_to_string(out.join("train.py")).expect("train.py");
    assert!(
        train.contains(
            "p.add_argument(\"--num-generations\", dest=\"num_generations\", type=int, default=8)"
        ),
        "{train}"
    );
    assert!(
        train.contains("dest=\"beta\", type=float, default=1e-3)"),
        "grpo reads ref_logp: {train}"
    );
    assert!(
        train.contains("use_cpu=cpu"),
        "runs on a CPU machine: {train}"
    );
    let r = keel(&[
        "export",
        "stdlib/dapo.recipe",
        "--target",
        "trl",
        "--out",
        &o,
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("error[E0802]: TRL cannot run"),
        "{}",
        text(&r.stderr)
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Each diagnostic is printed once: a block whose first line is the
/// one-line form (`file:line:col: error[CODE]: message`), then the count.
#[test]
fn each_diagnostic_is_printed_once() {
    let p = temp_recipe(
        "twice.recipe",
        "import std/grpo\n\nrecipe twice extends grpo {\n    rollout { temprature = 0.7 }\n}\n",
    );
    let out = keel(&["check", p.to_str().expect("utf-8"), "--color", "never"]);
    let err = text(&out.stderr);
    let line = format!(
        "{}:4:15: error[E0106]: section `rollout` has no key `temprature`",
        p.display()
    );
    assert_eq!(err.matches(&line).count(), 1, "{err}");
    assert!(
        err.starts_with(&line),
        "the block starts with the line: {err}"
    );
    assert!(err.contains("Help: did you mean `temperature`?"), "{err}");
    assert!(err.trim_end().ends_with("1 error, 0 warnings"), "{err}");
}

/// An inherited entry that reads what the recipe removed is reported at the
/// removal in the user's file, once, with the fix (`objective = none`
/// before the new objective, `monitor.clip_frac = none`); the fixed recipe
/// checks.
#[test]
fn extends_with_a_replaced_objective_points_at_the_users_override() {
    let p = temp_recipe(
        "replaced.recipe",
        "import std/grpo\n\nrecipe replaced extends grpo {\n    credit = none\n    objective { loss = -reward * logp }\n}\n",
    );
    let out = keel(&["check", p.to_str().expect("utf-8"), "--color", "never"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let line = format!("{}:4:5: error[E0100]: `credit = none` removes", p.display());
    assert_eq!(err.matches(&line).count(), 1, "{err}");
    assert!(!err.contains("std/ppo.recipe:34:35: error"), "{err}");
    assert!(
        err.contains("write `objective = none` before your `objective { … }`")
            && err.contains("`monitor.clip_frac = none`"),
        "{err}"
    );
    let fixed = temp_recipe(
        "replaced-fixed.recipe",
        "import std/grpo\n\nrecipe fixed extends grpo {\n    credit = none\n    objective = none\n    objective { loss = -reward * logp }\n    monitor.clip_frac = none\n}\n",
    );
    let out = keel(&["check", fixed.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `keel export` of a loss that reads `reward`: refused at the term with
/// the rewrite (the reward's part in `credit`, the loss over `advantages`),
/// naming `reward` as the recipe wrote it; the rewrite exports. A credit
/// that reads `reward` reads the engine's reward, so the quickstart (whose
/// `reward` section is Keel's) exports with --allow-partial, listing the
/// section as dropped.
#[test]
fn export_of_a_loss_reading_reward_suggests_the_rewrite() {
    let out_dir = std::env::temp_dir().join(format!("keel-cli-reward-{}", std::process::id()));
    let o = out_dir.to_string_lossy().to_string();
    let p = temp_recipe(
        "wreinforce.recipe",
        "import std/grpo\n\nrecipe wreinforce extends grpo {\n    objective = none\n    objective { loss = -(if reward > 0 then 1 else -0.5) * logp }\n    monitor = none\n}\n",
    );
    for target in ["verl", "trl"] {
        let out = keel(&[
            "export",
            p.to_str().expect("utf-8"),
            "--target",
            target,
            "--out",
            &o,
            "--error-format",
            "short",
        ]);
        assert_eq!(out.status.code(), Some(1), "{target}");
        let err = text(&out.stderr);
        assert!(
            err.contains(":5:17: error[E0800]: the loss's `objective` term reads `reward`"),
            "{target}: {err}"
        );
        let out = keel(&[
            "export",
            p.to_str().expect("utf-8"),
            "--target",
            target,
            "--out",
            &o,
        ]);
        let err = text(&out.stderr);
        assert!(
            err.contains("move what reads `reward` into `credit`")
                && err.contains("over `advantages`"),
            "{target}: {err}"
        );
        assert!(!err.contains("`correct`"), "{target}: {err}");
    }
    let rewritten = temp_recipe(
        "wreinforce2.recipe",
        "import std/grpo\n\nrecipe wreinforce2 extends grpo {\n    credit = none\n    credit { value = if reward > 0 then 1 else -0.5 }\n    objective = none\n    objective { loss = -credit * logp }\n    monitor = none\n}\n",
    );
    for target in ["verl", "trl"] {
        let out = keel(&[
            "export",
            rewritten.to_str().expect("utf-8"),
            "--target",
            target,
            "--out",
            &o,
        ]);
        assert!(out.status.success(), "{target}: {}", text(&out.stderr));
    }
    let out = keel(&[
        "export",
        "examples/quickstart.recipe",
        "--target",
        "trl",
        "--out",
        &o,
        "--allow-partial",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("with the recipe's loss and credit"), "{err}");
    assert!(
        err.contains("dropped: the `reward` section: TRL's `reward_funcs`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// The exports carry the optimizer and batch settings (the quickstart's
/// warm-up, clip, steps and batch) and list, in the README and on the
/// command line, what the engine has no place for.
#[test]
fn exports_map_the_optimizer_and_list_what_they_cannot() {
    let out_dir = std::env::temp_dir().join(format!("keel-cli-settings-{}", std::process::id()));
    let o = out_dir.to_string_lossy().to_string();
    let out = keel(&[
        "export",
        "examples/quickstart.recipe",
        "--target",
        "verl",
        "--out",
        &o,
        "--allow-partial",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("not mapped"),
        "{}",
        text(&out.stderr)
    );
    let ov = std::fs::read_to_string(out_dir.join("overrides.txt")).expect("overrides");
    for line in [
        "actor_rollout_ref.actor.optim.lr=0.0003",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=20",
        "actor_rollout_ref.actor.optim.min_lr_ratio=1.0",
        "actor_rollout_ref.actor.optim.zero_indexed_step=False",
        "actor_rollout_ref.actor.optim.clip_grad=1.0",
        "trainer.total_training_steps=300",
        "data.train_batch_size=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64",
    ] {
        assert!(ov.lines().any(|l| l == line), "{line} missing:\n{ov}");
    }
    let p = temp_recipe(
        "unmapped.recipe",
        "import std/dapo\n\nrecipe unmapped extends dapo {\n    optimizer { lr = 1e-4, warmup = 3, schedule = linear, steps = 10 }\n    rollout { temperature = 1.2 - 0.4 * min(1, step / 10) }\n}\n",
    );
    let out = keel(&[
        "export",
        p.to_str().expect("utf-8"),
        "--target",
        "verl",
        "--out",
        &o,
        "--allow-partial",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for what in [
        "not mapped: the linear decay of `optimizer.lr`",
        "not mapped: `rollout.temperature` changes during the run",
        "not mapped: `rollout.dynamic_sampling`: verl has no such setting",
    ] {
        assert!(err.contains(what), "{what}: {err}");
    }
    let readme = std::fs::read_to_string(out_dir.join("README.md")).expect("README");
    assert!(
        readme.contains("## Not mapped") && readme.contains("the linear decay of `optimizer.lr`"),
        "{readme}"
    );
    let out = keel(&[
        "export",
        p.to_str().expect("utf-8"),
        "--target",
        "trl",
        "--out",
        &o,
        "--allow-partial",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        !err.contains("linear decay"),
        "TRL runs the recipe's rate: {err}"
    );
    let trainer =
        std::fs::read_to_string(out_dir.join("keel_unmapped/trainer.py")).expect("trainer");
    assert!(
        trainer.contains("LR_SCHEDULE = [0.333") && trainer.contains("UPDATES_PER_STEP = 1"),
        "{trainer}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}
