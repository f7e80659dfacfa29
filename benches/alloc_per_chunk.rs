//! Allocations per forwarded stream chunk. A counting global allocator wraps
//! the system one; each chunk (whole SSE events, ending on an event boundary)
//! goes through `EventAligner::push` and the per-chunk usage check, as the
//! relay does. Prints allocations and bytes allocated per chunk for 100 B,
//! 10 KiB and 1 MiB chunks, and exits non-zero if the bytes allocated per
//! chunk grow with the chunk size (the relay must not copy what it forwards).
//!
//! Run: `cargo bench --bench alloc_per_chunk`

use bytes::Bytes;
use kimi_gateway::proxy::sse::EventAligner;
use kimi_gateway::proxy::usage::mentions_usage;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A chunk of `size` bytes made of whole `data: {…}\n\n` events, shaped
/// like the content deltas of a chat completion stream.
fn chunk_of(size: usize) -> Bytes {
    let head = br#"data: {"choices":[{"index":0,"delta":{"content":""#;
    let tail = b"\"}}]}\n\n";
    let overhead = head.len() + tail.len();
    assert!(size > overhead, "chunk too small for one event");
    let per_event = size.min(16 * 1024);
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let left = size - out.len();
        // The last event takes what is left; earlier ones `per_event` bytes.
        let this = if left < per_event + overhead + 1 {
            left
        } else {
            per_event
        };
        out.extend_from_slice(head);
        out.resize(out.len() + this - overhead, b'x');
        out.extend_from_slice(tail);
    }
    assert_eq!(out.len(), size);
    assert!(out.ends_with(b"\n\n"));
    // Like a body frame from hyper: a shared buffer, cheap to clone.
    let shared = Bytes::from(out);
    let _promote = shared.clone();
    shared
}

struct Row {
    size: usize,
    chunks: u64,
    allocs: u64,
    bytes: u64,
}

fn measure(size: usize, chunks: u64) -> Row {
    let chunk = chunk_of(size);
    let mut aligner = EventAligner::default();
    // One unmeasured round so lazily built statics (memchr finders) exist.
    let first = aligner.push(chunk.clone()).expect("whole events");
    black_box(mentions_usage(&first));
    drop(first);

    let inputs: Vec<Bytes> = (0..chunks).map(|_| chunk.clone()).collect();
    let (allocs0, bytes0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    for input in inputs {
        let out = aligner.push(black_box(input)).expect("whole events");
        black_box(mentions_usage(&out));
        drop(black_box(out));
    }
    let (allocs1, bytes1) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    assert!(!aligner.has_partial());
    Row {
        size,
        chunks,
        allocs: allocs1 - allocs0,
        bytes: bytes1 - bytes0,
    }
}

/// For contrast: the same chunk cut in the middle of an event, so the
/// aligner must keep (copy) the partial event until its end arrives.
fn measure_split(size: usize, chunks: u64) -> Row {
    let chunk = chunk_of(size);
    let cut = size / 2 + 7;
    let (a, b) = (chunk.slice(..cut), chunk.slice(cut..));
    let mut aligner = EventAligner::default();
    let inputs: Vec<(Bytes, Bytes)> = (0..chunks).map(|_| (a.clone(), b.clone())).collect();
    let (allocs0, bytes0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    for (a, b) in inputs {
        drop(black_box(aligner.push(a)));
        drop(black_box(aligner.push(b)));
    }
    let (allocs1, bytes1) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    Row {
        size,
        chunks,
        allocs: allocs1 - allocs0,
        bytes: bytes1 - bytes0,
    }
}

fn main() -> ExitCode {
    let rows = [
        measure(100, 10_000),
        measure(10 * 1024, 10_000),
        measure(1024 * 1024, 200),
    ];
    println!("EventAligner::push + mentions_usage, chunks ending on an event boundary");
    println!(
        "{:>10} {:>8} {:>14} {:>16}",
        "chunk", "chunks", "allocs/chunk", "bytes/chunk"
    );
    for row in &rows {
        println!(
            "{:>10} {:>8} {:>14.3} {:>16.1}",
            human(row.size),
            row.chunks,
            row.allocs as f64 / row.chunks as f64,
            row.bytes as f64 / row.chunks as f64
        );
    }
    let split = measure_split(1024 * 1024, 200);
    println!(
        "contrast, 1 MiB chunk cut mid-event (the partial event is kept): {:.3} allocs, {:.1} bytes per chunk",
        split.allocs as f64 / split.chunks as f64,
        split.bytes as f64 / split.chunks as f64
    );
    let per_chunk = |r: &Row| r.bytes as f64 / r.chunks as f64;
    let smallest = per_chunk(&rows[0]);
    let grows = rows.iter().any(|r| per_chunk(r) > smallest + 64.0);
    if grows {
        println!("FAIL: bytes allocated per chunk grow with the chunk size");
        ExitCode::FAILURE
    } else {
        println!("ok: bytes allocated per chunk do not depend on the chunk size");
        ExitCode::SUCCESS
    }
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1024 * 1024 => format!("{} MiB", s / (1024 * 1024)),
        s if s >= 1024 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}
