//! Key and value generation, as etcd's tools/benchmark makes them: a key is `key_size` bytes
//! holding the Go `binary.PutVarint` encoding of its index in the key space (zero padded), so the
//! same flags write the same keys against either server.

/// Go's `binary.PutVarint`: zig-zag then unsigned LEB128.
pub fn put_varint(buf: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        buf.push((u as u8) | 0x80);
        u >>= 7;
    }
    buf.push(u as u8);
}

/// Picks keys from a key space of `space` indexes, sequentially (request i gets index i % space)
/// or uniformly at random.
#[derive(Clone, Debug)]
pub struct KeyGen {
    pub key_size: usize,
    pub space: u64,
    pub sequential: bool,
}

impl KeyGen {
    pub fn new(key_size: usize, space: u64, sequential: bool) -> Self {
        KeyGen { key_size, space: space.max(1), sequential }
    }

    /// The key index for request number `i`.
    pub fn index(&self, i: u64, rng: &mut fastrand::Rng) -> u64 {
        if self.sequential {
            i % self.space
        } else {
            rng.u64(0..self.space)
        }
    }

    /// The key bytes of index `idx`: the varint, zero padded (or truncated) to `key_size`.
    pub fn key(&self, idx: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.key_size.max(10));
        put_varint(&mut k, idx as i64);
        k.resize(self.key_size, 0);
        k
    }
}

/// A value of `size` bytes (etcd's benchmark sends a constant string; so do we).
pub fn value(size: usize) -> Vec<u8> {
    vec![b'x'; size]
}

/// Kubernetes-style object key: `/registry/<resource>/<namespace>/<name>`.
pub fn kube_key(resource: &str, namespace: u64, name: u64) -> Vec<u8> {
    format!("/registry/{resource}/ns-{namespace:04}/obj-{name:08}").into_bytes()
}

/// The end of the prefix range `[prefix, prefix_end)`, as clientv3.GetPrefixRangeEnd.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_go_binary_put_varint() {
        // Values checked against Go's encoding/binary.PutVarint.
        let cases: [(i64, &[u8]); 6] = [
            (0, &[0x00]),
            (1, &[0x02]),
            (-1, &[0x01]),
            (63, &[0x7e]),
            (64, &[0x80, 0x01]),
            (99_999, &[0xbe, 0x9a, 0x0c]),
        ];
        for (v, want) in cases {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b, want, "PutVarint({v})");
        }
    }

    #[test]
    fn keys_have_the_requested_size_and_are_distinct_per_index() {
        let g = KeyGen::new(8, 100_000, false);
        let mut seen = std::collections::HashSet::new();
        for idx in 0..100_000 {
            let k = g.key(idx);
            assert_eq!(k.len(), 8);
            assert!(seen.insert(k), "index {idx} collides");
        }
    }

    #[test]
    fn sequential_keys_cycle_through_the_key_space() {
        let g = KeyGen::new(8, 3, true);
        let mut rng = fastrand::Rng::with_seed(1);
        let got: Vec<u64> = (0..7).map(|i| g.index(i, &mut rng)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_keys_stay_in_the_key_space_and_cover_it() {
        let g = KeyGen::new(8, 10, false);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut hits = [0u32; 10];
        for i in 0..10_000 {
            let idx = g.index(i, &mut rng);
            hits[idx as usize] += 1;
        }
        assert!(hits.iter().all(|&h| h > 0), "{hits:?}");
    }

    #[test]
    fn zero_key_space_is_treated_as_one_key() {
        let g = KeyGen::new(4, 0, false);
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(g.index(5, &mut rng), 0);
    }

    #[test]
    fn prefix_end_as_clientv3() {
        assert_eq!(prefix_end(b"/registry/"), b"/registry0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn kube_keys_sort_by_namespace_then_name() {
        assert!(kube_key("pods", 1, 5) < kube_key("pods", 1, 10));
        assert!(kube_key("pods", 1, 99) < kube_key("pods", 2, 0));
        assert!(kube_key("pods", 3, 7).starts_with(b"/registry/pods/ns-0003/"));
    }
}
