//! `keel check` of a generated 1,000-line recipe: parse, resolve (with the
//! stdlib imports), check, and render nothing (it is clean).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn bench_check(c: &mut Criterion) {
    let src = keel_tests::generated_recipe(1000);
    let mut group = c.benchmark_group("check");
    group.bench_function("check_1000_lines", |b| {
        b.iter(|| {
            let checked = keel_tests::check_str(black_box(&src));
            assert!(!checked.has_errors());
            black_box(checked.recipes.len())
        })
    });
    group.bench_function("parse_1000_lines", |b| {
        b.iter(|| black_box(keel_grammar::parse(black_box(&src)).1.len()))
    });
    group.bench_function("format_1000_lines", |b| {
        b.iter(|| black_box(keel_compiler::format::format_source(black_box(&src)).map(|s| s.len())))
    });
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
