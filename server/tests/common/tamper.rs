//! Changing a stopped member's data behind raft's back, as a disk fault would: what the
//! corruption checks must find.

/// Rewrites the stored value of `key` (every revision of it) in a stopped member's backend.
pub fn tamper_value(data_dir: &std::path::Path, key: &[u8], value: &[u8]) {
    use prost::Message;
    use redb::{ReadableDatabase, ReadableTable};
    const KEYS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("key");
    let db = redb::Database::open(data_dir.join("member/snap/db")).unwrap();
    let mut rows = Vec::new();
    {
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(KEYS).unwrap();
        for row in t.iter().unwrap() {
            let (k, v) = row.unwrap();
            let mut kv = etcd_proto::mvccpb::KeyValue::decode(v.value()).unwrap();
            if kv.key == key {
                kv.value = value.to_vec();
                rows.push((k.value().to_vec(), kv.encode_to_vec()));
            }
        }
    }
    assert!(!rows.is_empty(), "no stored revision of {key:?}");
    let wtx = db.begin_write().unwrap();
    {
        let mut t = wtx.open_table(KEYS).unwrap();
        for (k, v) in &rows {
            t.insert(k.as_slice(), v.as_slice()).unwrap();
        }
    }
    wtx.commit().unwrap();
}
