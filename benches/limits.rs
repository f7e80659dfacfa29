//! Per-request cost of client keys and local rate limits: the key lookup
//! (SHA-256 of the presented key, a map probe, a constant-time compare) and
//! one admission against a key's and the global scope, next to the path a
//! gateway without limits takes.

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use kimi_gateway::auth::{ClientKey, KeyTable, digest};
use kimi_gateway::limits::{
    DEFAULT_MAX_TOKENS, DEFAULT_PROVIDER_QUEUE, LimitSettings, LimitSpec, Limits, ScopeKind,
    ScopeRegistry,
};
use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

/// Limits high enough never to refuse: the admitted path is what is timed.
fn generous() -> LimitSpec {
    LimitSpec {
        requests_per_minute: NonZeroU32::new(u32::MAX),
        requests_per_day: None,
        tokens_per_minute: NonZeroU64::new(u64::MAX / 4),
        tokens_per_day: None,
        concurrent_requests: NonZeroU32::new(1_000_000),
    }
}

fn keys(n: usize, registry: &mut ScopeRegistry) -> KeyTable {
    let mut table = KeyTable::default();
    for i in 0..n {
        let name = format!("team-{i}");
        let mut key = ClientKey::new(name.as_str().into(), digest(format!("sk-{i}").as_bytes()));
        key.limits = registry.scope(ScopeKind::Key, &name, "", generous());
        table.insert(key);
    }
    table
}

fn limits(registry: ScopeRegistry, global: LimitSpec, keys_limited: bool) -> Limits {
    let settings = LimitSettings {
        global,
        providers: Vec::new(),
        provider_queue: DEFAULT_PROVIDER_QUEUE,
        default_max_tokens: DEFAULT_MAX_TOKENS,
        redis: None,
    };
    Limits::new(settings, registry, keys_limited, None).expect("local limits")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits");
    group.measurement_time(Duration::from_secs(3));

    let mut registry = ScopeRegistry::new(None);
    let table = keys(20, &mut registry);
    group.bench_function("key_lookup_of_20", |b| {
        b.iter(|| black_box(table.find(black_box(b"sk-7"))).is_some())
    });

    let open = Limits::default();
    group.bench_function("no_limits_fast_path", |b| {
        b.iter(|| black_box(&open).is_off())
    });

    let limited = limits(registry, generous(), true);
    let key = table.find(b"sk-7").expect("key").clone();
    group.bench_function("local_admit_key_and_global", |b| {
        b.iter(|| {
            let admission = limited
                .admit(Some(&key), black_box("kimi-k2.6"), 1_500)
                .now_or_never()
                .expect("local admission does not wait")
                .expect("admitted");
            admission.refund();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
