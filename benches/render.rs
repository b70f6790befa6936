//! How long `audctl render -f values/values-prod.yaml` takes without process start-up: load and
//! check the values, render every template, parse every object into its type, order them, and
//! serialise the stream. Target (issue 5): well under 50 ms.
//! Run: `cargo bench -p audctl --bench render` (or `cargo xtask bench render`).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};

fn prod() -> Vec<(PathBuf, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("values/values-prod.yaml");
    let text = std::fs::read_to_string(&path).expect("values-prod.yaml");
    vec![(path, text)]
}

fn bench(c: &mut Criterion) {
    let files = prod();
    c.bench_function("render values-prod (values + templates + typed parse)", |b| {
        b.iter(|| {
            let values = audctl::values::load_texts(black_box(&files), &[]).expect("valid values");
            let objects = audctl::render::render(&values, None).expect("render");
            black_box(audctl::render::to_stream(&objects))
        })
    });
    c.bench_function("load and check values-prod only", |b| {
        b.iter(|| audctl::values::load_texts(black_box(&files), &[]).expect("valid values"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
