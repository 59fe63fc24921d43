use std::fs;
use std::path::Path;

use super::page::*;
use super::*;

type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

fn write_file(path: &Path, buckets: &Buckets) -> u64 {
    let file = fs::File::create(path).unwrap();
    let mut w = BoltWriter::new(std::io::BufWriter::new(file)).unwrap();
    for (name, rows) in buckets {
        let mut b = w.bucket(name).unwrap();
        for (k, v) in rows {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    let (_, size) = w.finish().unwrap();
    size
}

fn read_all(r: &BoltReader) -> Result<Buckets, BoltError> {
    let mut out = Vec::new();
    for (name, b) in r.buckets()? {
        let mut rows = Vec::new();
        r.for_each(&b, &mut |e| {
            rows.push((e.key.to_vec(), e.value.to_vec()));
            Ok(())
        })?;
        out.push((name, rows));
    }
    Ok(out)
}

fn round_trip(buckets: Buckets) -> BoltReader {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let size = write_file(&path, &buckets);
    assert_eq!(fs::metadata(&path).unwrap().len(), size);
    let r = BoltReader::open(&path).unwrap();
    assert_eq!(r.size(), size);
    let mut expected = buckets;
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(read_all(&r).unwrap(), expected);
    assert_eq!(r.check().unwrap(), Vec::<String>::new());
    r
}

fn rows(n: usize, value_len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n).map(|i| (format!("key{i:08}").into_bytes(), vec![(i % 251) as u8; value_len])).collect()
}

#[test]
fn small_buckets_round_trip_inline_and_the_root_is_a_page() {
    let r = round_trip(vec![
        (b"meta".to_vec(), vec![(b"consistent_index".to_vec(), 7u64.to_be_bytes().to_vec())]),
        (b"alarm".to_vec(), vec![]),
        (b"key".to_vec(), rows(3, 10)),
    ]);
    let buckets = r.buckets().unwrap();
    assert_eq!(buckets.len(), 3);
    assert!(buckets.iter().all(|(_, b)| matches!(b, BucketRef::Inline(_))), "small buckets are inline as bbolt writes them");
    // metas, root leaf, freelist
    assert_eq!(r.meta().pgid, 4);
}

#[test]
fn an_empty_bucket_and_an_empty_database_round_trip() {
    let r = round_trip(vec![(b"empty".to_vec(), vec![])]);
    match &r.buckets().unwrap()[0].1 {
        // bbolt's freshly created bucket: a page header with no elements
        BucketRef::Inline(page) => assert_eq!(page.len(), PAGE_HEADER_SIZE),
        other => panic!("{other:?}"),
    }
    round_trip(vec![]);
}

#[test]
fn many_keys_span_pages_and_branch_levels() {
    // ~40 bytes a row: about 100 rows a leaf; 200k rows need 2000 leaves, so two branch levels
    let r = round_trip(vec![(b"key".to_vec(), rows(200_000, 12)), (b"lease".to_vec(), rows(500, 20))]);
    let BucketRef::Page(root) = r.bucket(b"key").unwrap().unwrap() else { panic!("a big bucket has pages") };
    assert_eq!(r.tree_depth(root).unwrap(), 3, "root branch, branch level, leaves");
}

#[test]
fn large_values_use_overflow_pages() {
    let big: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"a".to_vec(), vec![1; 10]),
        (b"b".to_vec(), vec![2; 100_000]),
        (b"c".to_vec(), vec![3; 5000]),
        (b"d".to_vec(), vec![4; 1]),
    ];
    let r = round_trip(vec![(b"key".to_vec(), big)]);
    assert!(r.meta().pgid > 100_000 / 4096 + 2);
}

#[test]
fn the_writer_refuses_unsorted_duplicate_and_empty_keys() {
    let mut w = BoltWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    let mut b = w.bucket(b"k").unwrap();
    b.put(b"b", b"").unwrap();
    assert!(b.put(b"a", b"").is_err());
    assert!(b.put(b"b", b"").is_err());
    assert!(b.put(b"", b"").is_err());
    b.finish().unwrap();
    assert!(w.bucket(b"k").is_err(), "a bucket written twice");
    assert!(w.bucket(b"").is_err());
}

#[test]
fn a_damaged_meta_falls_back_to_the_other_and_two_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let buckets = vec![(b"key".to_vec(), rows(1000, 50))];
    write_file(&path, &buckets);
    let good = fs::read(&path).unwrap();

    let mut one = good.clone();
    one[PAGE_HEADER_SIZE + 20] ^= 0xff; // meta 0's root pgid
    fs::write(&path, &one).unwrap();
    let r = BoltReader::open(&path).unwrap();
    assert_eq!(r.meta().txid, 1, "meta 1 is used");
    assert_eq!(read_all(&r).unwrap(), buckets);

    let mut both = one;
    both[4096 + PAGE_HEADER_SIZE + 20] ^= 0xff;
    fs::write(&path, &both).unwrap();
    let e = BoltReader::open(&path).err().expect("both metas damaged");
    assert!(e.to_string().contains("no valid meta page: checksum error"), "{e}");

    fs::write(&path, &good[..4096 * 3]).unwrap();
    let e = BoltReader::open(&path).err().expect("truncated");
    assert!(e.to_string().contains("its meta says"), "{e}");

    fs::write(&path, b"not a database").unwrap();
    let e = BoltReader::open(&path).err().expect("garbage");
    assert!(e.to_string().contains("file size too small"), "{e}");

    fs::write(&path, vec![0u8; 8192]).unwrap();
    let e = BoltReader::open(&path).err().expect("zeros");
    assert!(e.to_string().contains("invalid database"), "{e}");
}

#[test]
fn damaged_data_pages_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write_file(&path, &vec![(b"key".to_vec(), rows(3000, 30)), (b"meta".to_vec(), rows(2, 8))]);
    let good = fs::read(&path).unwrap();
    // a deterministic spread of single-byte damage over every data page
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut failures = 0;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pos = 8192 + (x as usize % (good.len() - 8192));
        let mut bad = good.clone();
        bad[pos] ^= (x >> 32) as u8 | 1;
        fs::write(&path, &bad).unwrap();
        let outcome = BoltReader::open(&path).and_then(|r| {
            read_all(&r)?;
            r.check()
        });
        if outcome.is_err() {
            failures += 1;
        }
    }
    assert!(failures > 0, "some damage is detected");
}

#[test]
fn a_snapshot_saved_from_etcd_is_read_and_checks_clean() {
    // `etcdctl snapshot save` from etcd 3.4.23: 5 puts (one with a lease, one 10 kB value), a
    // delete, compaction at 2; the file ends with the sha256 etcd appends
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/etcd-3.4.23-snapshot.db");
    let r = BoltReader::open(&path).unwrap();
    assert_eq!(r.page_size(), 4096);
    assert_eq!(fs::metadata(&path).unwrap().len(), r.size() + 32);
    assert_eq!(r.check().unwrap(), Vec::<String>::new());
    let all = read_all(&r).unwrap();
    let names: Vec<String> = all.iter().map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect();
    assert_eq!(
        names,
        ["alarm", "auth", "authRoles", "authUsers", "cluster", "key", "lease", "members", "members_removed", "meta"]
    );
    let total: usize = all.iter().map(|(_, rows)| rows.len()).sum();
    assert_eq!(total, 12, "etcdutl snapshot status says 12 keys");
    let key = &all.iter().find(|(n, _)| n == b"key").unwrap().1;
    assert_eq!(key.len(), 5, "revisions 2..6 after compacting at 2");
    assert_eq!(key.last().unwrap().0.len(), 18, "the delete's tombstone");
    assert!(key.iter().any(|(_, v)| v.len() > 10_000), "the large value");
}

#[test]
fn get_finds_keys_through_branch_levels_and_inline_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write_file(&path, &vec![(b"key".to_vec(), rows(50_000, 12)), (b"meta".to_vec(), rows(3, 8))]);
    let r = BoltReader::open(&path).unwrap();
    let key = r.bucket(b"key").unwrap().unwrap();
    assert!(matches!(key, BucketRef::Page(_)));
    for i in [0usize, 1, 99, 100, 12_345, 49_999] {
        let k = format!("key{i:08}").into_bytes();
        assert_eq!(r.get(&key, &k).unwrap(), Some(vec![(i % 251) as u8; 12]), "key {i}");
    }
    assert_eq!(r.get(&key, b"key").unwrap(), None, "before the first key");
    assert_eq!(r.get(&key, b"key00000000x").unwrap(), None, "between keys");
    assert_eq!(r.get(&key, b"zzz").unwrap(), None, "after the last key");
    let meta = r.bucket(b"meta").unwrap().unwrap();
    assert!(matches!(meta, BucketRef::Inline(_)));
    assert_eq!(r.get(&meta, b"key00000002").unwrap(), Some(vec![2; 8]));
    assert_eq!(r.get(&meta, b"nope").unwrap(), None);
}
