//! The sampler's cost per row and token at real vocabularies (SmolLM2's
//! 49,152 and Qwen's 151,936 ids): `draw_row` (two passes, no sort at
//! top_p = 1, partial selection below) against the full sort of every row
//! the sampler did before, written out here as the baseline of the same run.

use criterion::{Criterion, criterion_group, criterion_main};
use keel_model::rng::Rng;
use keel_model::sample::draw_row;
use std::hint::black_box;

/// The sampler before: log-softmax into a vector, a full sort, the nucleus
/// walked in order (kept only as this benchmark's baseline).
fn draw_sorted(z: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> (u32, f64, f64) {
    let s: Vec<f64> = z.iter().map(|&x| x as f64 / temperature).collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    let lp: Vec<f64> = s.iter().map(|x| x - lse).collect();
    let ent = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
    let mut order: Vec<usize> = (0..lp.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    let mut keep = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        keep.push(i);
        mass += lp[i].exp();
        if mass >= top_p {
            break;
        }
    }
    let u = rng.uniform() * mass;
    let mut acc = 0.0;
    for &i in &keep {
        acc += lp[i].exp();
        if u < acc {
            return (i as u32, lp[i], ent);
        }
    }
    let i = keep.last().copied().unwrap_or(0);
    (i as u32, lp[i], ent)
}

/// A language model's row: a few likely ids over a long tail.
fn row(v: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..v)
        .map(|i| {
            let tail = (rng.normal() * 2.0) as f32 - 4.0;
            if i % 997 == 0 { tail + 12.0 } else { tail }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for v in [49_152, 151_936] {
        let z = row(v, 5);
        let mut g = c.benchmark_group(format!("sample_row_V{v}"));
        g.sample_size(30);
        for top_p in [1.0, 0.9] {
            g.bench_function(format!("full_sort_top_p{top_p}"), |b| {
                let mut rng = Rng::new(1);
                b.iter(|| black_box(draw_sorted(black_box(&z), 1.0, top_p, &mut rng)))
            });
            g.bench_function(format!("draw_row_top_p{top_p}"), |b| {
                let mut rng = Rng::new(1);
                b.iter(|| black_box(draw_row(black_box(&z), 1.0, top_p, &mut rng)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
