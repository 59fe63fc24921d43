//! Lessor behaviour with an injected clock: no test sleeps.

use std::time::{Duration, Instant};

use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::{Event, KeyValue};
use redb::Database;

use crate::{LeaseError, Lessor, LessorConfig, FOREVER_SECS, LEASE_REVOKE_RATE, MAX_LEASE_TTL};

struct Fixture {
    _dir: tempfile::TempDir,
    db: Database,
    lessor: Lessor,
}

fn fixture(cfg: LessorConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("db")).expect("db");
    let lessor = Lessor::open(&db, cfg).expect("open");
    Fixture { _dir: dir, db, lessor }
}

impl Fixture {
    fn grant(&self, id: i64, ttl: i64, now: Instant) -> Result<i64, LeaseError> {
        let w = self.db.begin_write().expect("write");
        let r = self.lessor.grant(&w, id, ttl, now);
        w.commit().expect("commit");
        r
    }
    fn remove(&self, id: i64) -> Result<(), LeaseError> {
        let w = self.db.begin_write().expect("write");
        let r = self.lessor.remove(&w, id);
        w.commit().expect("commit");
        r
    }
    fn checkpoint(&self, id: i64, remaining: i64, now: Instant) {
        let w = self.db.begin_write().expect("write");
        self.lessor.checkpoint(&w, id, remaining, now).expect("checkpoint");
        w.commit().expect("commit");
    }
    fn reopen(self, cfg: LessorConfig) -> Fixture {
        drop(self.lessor);
        let lessor = Lessor::open(&self.db, cfg).expect("reopen");
        Fixture { _dir: self._dir, db: self.db, lessor }
    }
}

fn put(key: &str, lease: i64, prev_lease: Option<i64>) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(KeyValue { key: key.into(), lease, ..Default::default() }),
        prev_kv: prev_lease.map(|l| KeyValue { key: key.into(), lease: l, ..Default::default() }),
    }
}

fn delete(key: &str, prev_lease: i64) -> Event {
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue { key: key.into(), ..Default::default() }),
        prev_kv: Some(KeyValue { key: key.into(), lease: prev_lease, ..Default::default() }),
    }
}

fn keys(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|k| k.as_bytes().to_vec()).collect()
}

#[test]
fn grant_refuses_id_zero_duplicates_and_too_large_ttls() {
    let f = fixture(LessorConfig::default());
    let now = Instant::now();
    let cases = [
        (0, 10, Err(LeaseError::NotFound)),
        (1, MAX_LEASE_TTL + 1, Err(LeaseError::TtlTooLarge)),
        (1, MAX_LEASE_TTL, Ok(MAX_LEASE_TTL)),
        (1, 10, Err(LeaseError::Exists)),
        (2, 5, Ok(5)),
    ];
    for (id, ttl, want) in cases {
        assert_eq!(f.grant(id, ttl, now), want, "grant({id}, {ttl})");
    }
    assert!(f.lessor.exists(1) && f.lessor.exists(2) && !f.lessor.exists(0));
}

#[test]
fn puts_attach_overwrites_move_and_deletes_detach() {
    let f = fixture(LessorConfig::default());
    let now = Instant::now();
    f.grant(1, 10, now).unwrap();
    f.grant(2, 10, now).unwrap();
    f.lessor.apply_events(&[put("b", 1, None), put("a", 1, None), put("c", 2, None)]);
    assert_eq!(f.lessor.keys(1).unwrap(), keys(&["a", "b"]));
    // overwrite without a lease detaches; with another lease moves
    f.lessor.apply_events(&[put("a", 0, Some(1)), put("b", 2, Some(1))]);
    assert_eq!(f.lessor.keys(1).unwrap(), keys(&[]));
    assert_eq!(f.lessor.keys(2).unwrap(), keys(&["b", "c"]));
    // ignore_lease keeps the lease: the put event carries the same lease
    f.lessor.apply_events(&[put("c", 2, Some(2))]);
    assert_eq!(f.lessor.keys(2).unwrap(), keys(&["b", "c"]));
    f.lessor.apply_events(&[delete("c", 2)]);
    assert_eq!(f.lessor.keys(2).unwrap(), keys(&["b"]));
    assert_eq!(f.lessor.keys(3), Err(LeaseError::NotFound));
}

#[test]
fn remove_forgets_the_lease_and_its_row() {
    let f = fixture(LessorConfig::default());
    let now = Instant::now();
    f.grant(7, 10, now).unwrap();
    f.lessor.apply_events(&[put("k", 7, None)]);
    f.remove(7).unwrap();
    assert!(!f.lessor.exists(7));
    assert_eq!(f.remove(7), Err(LeaseError::NotFound));
    let f = f.reopen(LessorConfig::default());
    assert!(!f.lessor.exists(7));
}

#[test]
fn only_a_primary_expires_and_renews() {
    let f = fixture(LessorConfig::default());
    let t0 = Instant::now();
    f.grant(1, 5, t0).unwrap();
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(100)), Vec::<i64>::new());
    assert_eq!(f.lessor.renew(1, t0), Err(LeaseError::NotPrimary));
    assert_eq!(f.lessor.time_to_live(1, false, t0).unwrap().remaining, FOREVER_SECS);
    f.lessor.promote(Duration::ZERO, t0);
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_millis(4999)), Vec::<i64>::new());
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(5)), vec![1]);
    // proposed once, then again only after the retry interval
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(6)), Vec::<i64>::new());
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(9)), vec![1]);
    f.lessor.demote();
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(100)), Vec::<i64>::new());
}

#[test]
fn keep_alive_extends_and_expired_leases_cannot_be_renewed() {
    let f = fixture(LessorConfig::default());
    let t0 = Instant::now();
    f.lessor.promote(Duration::ZERO, t0);
    f.grant(1, 5, t0).unwrap();
    assert_eq!(f.lessor.renew(1, t0 + Duration::from_secs(4)), Ok((5, false)));
    // the old deadline (t0+5) no longer expires it
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(6)), Vec::<i64>::new());
    assert_eq!(f.lessor.time_to_live(1, false, t0 + Duration::from_secs(6)).unwrap().remaining, 3);
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(9)), vec![1]);
    assert_eq!(f.lessor.renew(1, t0 + Duration::from_secs(9)), Err(LeaseError::Expired));
    assert_eq!(f.lessor.renew(2, t0), Err(LeaseError::NotFound));
}

#[test]
fn find_expired_is_rate_limited() {
    let f = fixture(LessorConfig::default());
    let t0 = Instant::now();
    f.lessor.promote(Duration::ZERO, t0);
    for id in 1..=25 {
        f.grant(id, 5, t0).unwrap();
    }
    let later = t0 + Duration::from_secs(10);
    let mut got = Vec::new();
    for _ in 0..3 {
        let batch = f.lessor.find_expired(10, later);
        assert!(batch.len() <= 10);
        got.extend(batch);
    }
    got.sort();
    assert_eq!(got, (1..=25).collect::<Vec<_>>());
}

#[test]
fn promote_extends_deadlines_by_the_election_timeout() {
    let f = fixture(LessorConfig::default());
    let t0 = Instant::now();
    f.grant(1, 5, t0).unwrap();
    f.lessor.promote(Duration::from_secs(1), t0);
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_millis(5999)), Vec::<i64>::new());
    assert_eq!(f.lessor.find_expired(10, t0 + Duration::from_secs(6)), vec![1]);
}

#[test]
fn promote_spreads_a_pile_up_of_expiries() {
    let f = fixture(LessorConfig::default());
    let t0 = Instant::now();
    let n = 4 * LEASE_REVOKE_RATE as i64;
    let w = f.db.begin_write().unwrap();
    for id in 1..=n {
        f.lessor.grant(&w, id, 10, t0).unwrap();
    }
    w.commit().unwrap();
    f.lessor.promote(Duration::ZERO, t0);
    // at most 3/4 of the revoke rate falls due in the first second after the common deadline
    let first = f.lessor.find_expired(usize::MAX, t0 + Duration::from_secs(11));
    assert!(first.len() <= 3 * LEASE_REVOKE_RATE / 4 + 1, "{} due in one second", first.len());
    // the rest falls due later (the first ones come back after the retry interval)
    let mut all = f.lessor.find_expired(usize::MAX, t0 + Duration::from_secs(30));
    all.extend(first);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n as usize);
}

#[test]
fn checkpoints_are_due_per_interval_and_persist_the_remaining_ttl() {
    let cfg = LessorConfig { checkpoint_enabled: true, checkpoint_interval: Duration::from_secs(10) };
    let f = fixture(cfg.clone());
    let t0 = Instant::now();
    f.lessor.promote(Duration::ZERO, t0);
    f.grant(1, 100, t0).unwrap();
    f.grant(2, 5, t0).unwrap(); // shorter than the interval: never checkpointed
    assert_eq!(f.lessor.due_checkpoints(10, t0 + Duration::from_secs(9)), vec![]);
    let due = f.lessor.due_checkpoints(10, t0 + Duration::from_millis(10_500));
    assert_eq!(due, vec![(1, 90)]);
    f.checkpoint(1, 90, t0 + Duration::from_millis(10_500));
    // a restart brings back the checkpointed remaining TTL, not the full one
    let f = f.reopen(cfg.clone());
    let t1 = Instant::now();
    f.lessor.promote(Duration::ZERO, t1);
    let st = f.lessor.time_to_live(1, false, t1).unwrap();
    assert_eq!((st.granted_ttl, st.remaining), (100, 90));
    // keep-alives schedule no extra checkpoints: one per interval
    f.lessor.renew(1, t1).unwrap();
    assert_eq!(f.lessor.due_checkpoints(10, t1 + Duration::from_secs(11)).len(), 1);
    // a keep-alive restores the full TTL and asks to clear the stored remaining TTL
    assert_eq!(f.lessor.renew(1, t1), Ok((100, true)));
    f.checkpoint(1, 0, t1);
    assert_eq!(f.lessor.renew(1, t1), Ok((100, false)));
}

#[test]
fn disabled_checkpoints_are_never_due() {
    let cfg = LessorConfig { checkpoint_enabled: false, checkpoint_interval: Duration::from_secs(1) };
    let f = fixture(cfg);
    let t0 = Instant::now();
    f.lessor.promote(Duration::ZERO, t0);
    f.grant(1, 100, t0).unwrap();
    assert_eq!(f.lessor.due_checkpoints(10, t0 + Duration::from_secs(50)), vec![]);
}

#[test]
fn leases_are_listed_soonest_deadline_first_and_keys_are_rebuilt() {
    let f = fixture(LessorConfig::default());
    let t0 = Instant::now();
    f.lessor.promote(Duration::ZERO, t0);
    f.grant(1, 30, t0).unwrap();
    f.grant(2, 10, t0).unwrap();
    f.grant(3, 20, t0).unwrap();
    assert_eq!(f.lessor.leases(t0), vec![2, 3, 1]);
    let f = f.reopen(LessorConfig::default());
    f.lessor.attach_existing(vec![(b"x".to_vec(), 2), (b"y".to_vec(), 9), (b"z".to_vec(), 0)]);
    assert_eq!(f.lessor.keys(2).unwrap(), keys(&["x"]));
    let st = f.lessor.time_to_live(2, true, t0).unwrap();
    assert_eq!((st.granted_ttl, st.keys), (10, keys(&["x"])));
    assert_eq!(f.lessor.time_to_live(9, true, t0), None);
}
