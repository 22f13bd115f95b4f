//! The cubecl logits kernel equals the CPU kernel (and so the interpreter,
//! which `tests/logits.rs` holds the CPU kernel to), for f32 and bf16
//! logits (odd vocabularies included: bf16 rows then straddle words). Runs on the wgpu
//! runtime: Mesa's lavapipe in CI (KEEL_REQUIRE_VULKAN), any Vulkan GPU
//! elsewhere; skipped where no Vulkan device answers, unless required.

mod common;

use keel_compiler::logits;
use keel_device::Logits;

fn rows(n: usize, v: usize, seed: u64) -> Vec<f32> {
    keel_compiler::synth::Lcg(seed).fill(n * v, -5.0, 5.0)
}

#[test]
fn cubecl_logits_kernel_equals_the_cpu_kernel() {
    let Some(client) = common::client_or_skip() else {
        return;
    };
    for (n, v, bf16) in [
        (5, 7, false),
        (13, 1000, false),
        (4, 33_000, false),
        (5, 7, true),
        (3, 1001, true),
        // More rows than one cube holds (rows_per_cube: 32 on lavapipe),
        // rows that end in the four-wide loop and in its tail.
        (70, 300, true),
        (45, 64, false),
    ] {
        let mut z = rows(n, v, (n * v) as u64);
        z[v - 1] = 40.0; // a late maximum in row 0
        let zb: Vec<logits::Bf16> = z.iter().map(|&x| logits::Bf16::from_f32(x)).collect();
        let z = if bf16 {
            Logits::Bf16(&zb)
        } else {
            Logits::F32(&z)
        };
        let tokens: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let cpu = z.cpu_forward(&tokens, v);
        let gpu = keel_device::logits_forward(&client, z, &tokens, v).expect("forward");
        for i in 0..n {
            for (a, b, what) in [
                (gpu.logp[i], cpu.logp[i], "logp"),
                (gpu.entropy[i], cpu.entropy[i], "entropy"),
            ] {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{n}x{v} row {i} {what}: {a} vs {b}"
                );
            }
        }
        let dl: Vec<f32> = (0..n).map(|i| 0.3 - 0.1 * i as f32).collect();
        let de: Vec<f32> = (0..n).map(|i| -0.2 + 0.05 * i as f32).collect();
        let d_cpu = z.cpu_backward(&tokens, v, &cpu, &dl, &de);
        let d_gpu =
            keel_device::logits_backward(&client, z, &tokens, v, &gpu, &dl, &de).expect("backward");
        let scale = d_cpu.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (k, (a, b)) in d_gpu.iter().zip(&d_cpu).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "{n}x{v} d_logits[{k}]: {a} vs {b}"
            );
        }
    }
}
