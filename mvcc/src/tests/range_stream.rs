//! RangeStream: merged chunks equal Range at the pinned revision, whatever the chunk sizes.

use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::{RangeRequest, RangeResponse};

use super::{keys, Fixture};
use crate::range_stream::adjust_chunk_limit;
use crate::{MvccError, RangeStream};

/// Every chunk of a stream answering `req` (chunks aiming at `target` bytes), or its error with
/// the chunks before it.
fn chunks(f: &Fixture, req: &RangeRequest, target: usize) -> (Vec<RangeResponse>, Option<MvccError>) {
    let mut stream = RangeStream::new(req.clone(), target);
    let mut out = Vec::new();
    loop {
        match stream.next_chunk(&f.store) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Protobuf merge of a stream's chunks (what clientv3's GetStreamToGetResponse does).
fn merge(chunks: Vec<RangeResponse>) -> RangeResponse {
    let mut all = RangeResponse::default();
    for c in chunks {
        all.kvs.extend(c.kvs);
        if c.header.is_some() {
            all.header = c.header;
        }
        all.more |= c.more;
        if c.count != 0 {
            all.count = c.count;
        }
    }
    all
}

/// k00..k(n-1), each with a value of `size` bytes.
fn fixture(n: usize, size: usize) -> Fixture {
    let f = Fixture::new();
    for i in 0..n {
        f.put(&format!("k{i:02}"), &"v".repeat(size + i % 3));
    }
    f
}

fn req(key: &str, end: &str, with: impl FnOnce(&mut RangeRequest)) -> RangeRequest {
    let mut r = RangeRequest { key: key.into(), range_end: end.into(), ..Default::default() };
    with(&mut r);
    r
}

#[test]
fn merged_chunks_equal_range_for_limits_keys_only_count_only_single_keys_and_revisions() {
    let f = fixture(40, 20);
    f.del("k05", "k08");
    f.put("k10", "again");
    let old = f.rev() - 3;
    let cases = [
        req("k", "l", |_| {}),
        req("\0", "\0", |_| {}),
        req("k17", "", |_| {}),
        req("k17\0", "", |_| {}),
        req("k", "l", |r| r.limit = 5),
        req("k", "l", |r| r.limit = 10),
        req("k", "l", |r| r.limit = 36),
        req("k", "l", |r| r.limit = 37),
        req("k", "l", |r| r.limit = 100),
        req("k", "l", |r| r.limit = -1),
        req("k", "l", |r| r.keys_only = true),
        req("k", "l", |r| r.count_only = true),
        req("k", "l", |r| {
            r.count_only = true;
            r.limit = 3
        }),
        req("k", "l", |r| r.revision = old),
        req("k20", "k30", |r| {
            r.revision = 3;
            r.limit = 1
        }),
        req("k", "l", |r| r.sort_order = SortOrder::Ascend as i32),
        req("m", "z", |_| {}),
        req("k", "l", |r| r.serializable = true),
    ];
    for (i, r) in cases.iter().enumerate() {
        for target in [1, 200, 1 << 20] {
            let want = f.range(r.clone()).unwrap();
            let (got, err) = chunks(&f, r, target);
            assert_eq!(err, None, "case {i}");
            let last = got.len() - 1;
            for (j, c) in got.iter().enumerate() {
                assert_eq!(c.header.is_some(), j == last, "case {i}: the final chunk alone has the header");
                if j != last {
                    assert!(!c.more && c.count == 0 && !c.kvs.is_empty(), "case {i} chunk {j}");
                }
            }
            assert_eq!(merge(got), want, "case {i} target {target}");
        }
    }
}

#[test]
fn small_targets_give_many_chunks_and_large_ones_grow_chunks() {
    let f = fixture(40, 20);
    let (tiny, _) = chunks(&f, &req("k", "l", |_| {}), 1);
    assert!(tiny.len() >= 4, "a 1-byte target halves chunks down to one key: {}", tiny.len());
    let (big, _) = chunks(&f, &req("k", "l", |_| {}), 1 << 20);
    assert_eq!(big.iter().map(|c| c.kvs.len()).collect::<Vec<_>>(), vec![10, 20, 10], "10, then doubled");
}

#[test]
fn chunk_limit_doubles_below_half_the_target_halves_above_twice_and_stays_at_least_one() {
    assert_eq!(adjust_chunk_limit(10, 100, 1000), 20);
    assert_eq!(adjust_chunk_limit(10, 500, 1000), 10);
    assert_eq!(adjust_chunk_limit(10, 2000, 1000), 10);
    assert_eq!(adjust_chunk_limit(10, 2001, 1000), 5);
    assert_eq!(adjust_chunk_limit(1, 5000, 1000), 1);
}

#[test]
fn writes_between_chunks_are_not_seen_and_the_header_keeps_the_first_revision() {
    let f = fixture(25, 5);
    let first_rev = f.rev();
    let want = f.range(req("k", "l", |_| {})).unwrap();
    let mut stream = RangeStream::new(req("k", "l", |_| {}), 1 << 20);
    let mut got = vec![stream.next_chunk(&f.store).unwrap().unwrap()];
    f.put("k00", "changed");
    f.put("k100", "new");
    f.del("k20", "");
    while let Some(c) = stream.next_chunk(&f.store).unwrap() {
        got.push(c);
    }
    let got = merge(got);
    assert_eq!(got, want);
    assert_eq!(got.header.unwrap().revision, first_rev);
}

#[test]
fn compaction_past_the_pinned_revision_fails_the_next_chunk() {
    let f = fixture(25, 5);
    let mut stream = RangeStream::new(req("k", "l", |_| {}), 1 << 20);
    assert_eq!(stream.next_chunk(&f.store).unwrap().unwrap().kvs.len(), 10);
    f.put("k00", "changed");
    let rev = f.rev();
    f.apply(|t| t.compact(rev).unwrap());
    assert_eq!(stream.next_chunk(&f.store), Err(MvccError::Compacted));
    assert_eq!(stream.next_chunk(&f.store), Ok(None), "an error ends the stream");
}

#[test]
fn compacted_and_future_revisions_fail_before_any_chunk() {
    let f = fixture(5, 5);
    f.apply(|t| t.compact(4).unwrap());
    let (got, err) = chunks(&f, &req("k", "l", |r| r.revision = 2), 1 << 20);
    assert!(got.is_empty());
    assert_eq!(err, Some(MvccError::Compacted));
    let (got, err) = chunks(&f, &req("k", "l", |r| r.revision = f.rev() + 1), 1 << 20);
    assert!(got.is_empty());
    assert_eq!(err, Some(MvccError::FutureRev));
}

#[test]
fn a_sort_target_without_order_is_sorted_over_the_whole_range_as_range_does() {
    let f = Fixture::new();
    for i in 0..30 {
        // values in the reverse of key order
        f.put(&format!("k{i:02}"), &format!("{:02}", 29 - i));
    }
    for limit in [0, 7, 30] {
        let r = req("k", "l", |r| {
            r.sort_target = SortTarget::Value as i32;
            r.limit = limit
        });
        let want = f.range(r.clone()).unwrap();
        if limit != 7 {
            // (with a limit, etcd sorts only the first limit + 1 keys in key order)
            assert_eq!(keys(&want.kvs)[0], "k29");
        }
        let (got, err) = chunks(&f, &r, 64);
        assert_eq!(err, None);
        assert!(got.len() > 1 || limit == 7);
        assert_eq!(merge(got), want, "limit {limit}");
    }
}
