//! A single-threaded driver of `Index::put` as the applier calls it, for callgrind:
//! fills an index with N keys, warms it with W puts at random existing keys, then measures M
//! more (each through `put_one`, so `--toggle-collect='*put_one*'` counts only those).
//! Prints the heap bytes held per key (a counting allocator: requested sizes, no malloc
//! overhead) after the fill and after the puts.
//!
//! `index_put <rand8|k8s> <N> <W> <M>`, e.g. under callgrind:
//! `valgrind --tool=callgrind --toggle-collect='*put_one*' --cache-sim=yes \
//!   target/release/examples/index_put rand8 100000 100000 100000`
//!
//! Key sets: `rand8` is 8 pseudo-random bytes per key; `k8s` is Kubernetes-like
//! `/registry/pods/ns-<i%50>/pod-<i>-<5 chars>` (long shared prefixes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_mvcc::index::Index;
use etcd_mvcc::key_index::KeyAt;
use etcd_mvcc::Revision;

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer: a bijection, so distinct indexes give distinct 8-byte keys
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Key number `i` of the set, written into `out`.
fn key(set: &str, i: u64, out: &mut Vec<u8>) {
    out.clear();
    match set {
        "rand8" => out.extend_from_slice(&mix(i).to_be_bytes()),
        "k8s" => {
            out.extend_from_slice(b"/registry/pods/ns-");
            push_decimal(out, i % 50);
            out.extend_from_slice(b"/pod-");
            push_decimal(out, i);
            out.push(b'-');
            let mut h = mix(i);
            for _ in 0..5 {
                out.push(b"bcdfghjklmnpqrstvwxz2456789"[(h % 27) as usize]);
                h /= 27;
            }
        }
        other => panic!("unknown key set {other}"),
    }
}

#[inline(never)]
fn put_one(idx: &Index, key: &[u8], rev: Revision) -> Option<KeyAt> {
    idx.put(key, rev)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let set = args.get(1).map_or("rand8", |s| s.as_str());
    let arg = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (n, warm, measured) = (arg(2, 100_000), arg(3, 100_000), arg(4, 100_000));

    let base = HELD.load(Ordering::Relaxed);
    let idx = Index::new();
    let mut buf = Vec::with_capacity(64);
    let mut rev = 1;
    for i in 0..n {
        key(set, i, &mut buf);
        rev += 1;
        idx.put(&buf, Revision::new(rev, 0));
    }
    let filled = HELD.load(Ordering::Relaxed) - base;
    let mut seed = 12345u64;
    let mut live = 0u64;
    for round in 0..warm + measured {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        key(set, (seed >> 33) % n, &mut buf);
        rev += 1;
        let before = if round < warm {
            idx.put(&buf, Revision::new(rev, 0))
        } else {
            put_one(&idx, &buf, Revision::new(rev, 0))
        };
        live += u64::from(before.is_some());
    }
    let after = HELD.load(Ordering::Relaxed) - base;
    println!(
        "{set} keys={} puts={} live_before={live} bytes/key: filled {:.2}, after puts {:.2}",
        idx.len(),
        warm + measured,
        filled as f64 / n as f64,
        after as f64 / n as f64
    );
}
