//! The `Lessor`: every lease's TTL, checkpointed remaining TTL and attached keys, and — on the
//! leader only — the deadlines that decide expiry.
//!
//! Two kinds of state, kept apart on purpose:
//! - replicated state, changed only by the applier from committed raft entries: which leases
//!   exist, their granted TTL and checkpointed remaining TTL (the `lease` table, written in the
//!   applier's batch transaction), and which keys are attached (derived from the key table,
//!   rebuilt at start). Nothing of it depends on the clock;
//! - the primary's (leader's) local timing state: a deadline per lease, a min-heap of deadlines
//!   and a heap of scheduled checkpoints. It only decides *when* the leader proposes a revoke
//!   or a checkpoint through raft; followers keep every lease "forever" and never expire one.
//!
//! Every method that needs the time takes `now`, so the timing rules are testable without
//! sleeping.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use etcd_proto::leasepb;
use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::Event;
use parking_lot::Mutex;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::LeaseError;

/// The lease table: lease ID -> prost-encoded `leasepb.Lease` {ID, TTL, RemainingTTL}.
pub const LEASE_TABLE: TableDefinition<i64, &[u8]> = TableDefinition::new("lease");

/// The largest TTL a grant may ask for, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Leases revoked per second at most (etcd's `leaseRevokeRate`); the expiry loop runs twice a
/// second and takes half of it each time.
pub const LEASE_REVOKE_RATE: usize = 1000;

/// Checkpoints per raft entry at most (etcd's `maxLeaseCheckpointBatchSize`).
pub const MAX_CHECKPOINT_BATCH: usize = 1000;

/// Seconds of Go's largest Duration: what etcd reports as the remaining TTL of a lease that
/// has no deadline on this member.
pub const FOREVER_SECS: i64 = i64::MAX / 1_000_000_000;

/// An expired lease whose revoke has not been applied is proposed again after this long.
const EXPIRED_RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// The lessor's local settings (they only shape the leader's timing, never applied state).
#[derive(Debug, Clone)]
pub struct LessorConfig {
    /// Checkpoint remaining TTLs of long leases through raft (etcd's lease checkpoint).
    pub checkpoint_enabled: bool,
    /// How often a lease's remaining TTL is checkpointed.
    pub checkpoint_interval: Duration,
}

impl Default for LessorConfig {
    fn default() -> Self {
        LessorConfig { checkpoint_enabled: true, checkpoint_interval: Duration::from_secs(300) }
    }
}

/// One lease as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub id: i64,
    /// The TTL it was granted with, in seconds.
    pub granted_ttl: i64,
    /// Seconds left (truncated, as etcd); `i64` seconds of "forever" on a non-primary lessor.
    pub remaining: i64,
    /// Attached keys, sorted; filled only when asked for.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Lease {
    ttl: i64,
    /// Last checkpointed remaining TTL; 0 means "unset, use the full ttl".
    remaining_ttl: i64,
    /// `None` = forever (a non-primary lessor, or before promotion).
    expiry: Option<Instant>,
    /// The deadline this lease is registered under in the expiry heap.
    next_check: Option<Instant>,
    keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    fn effective_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }

    fn remaining(&self, now: Instant) -> Duration {
        match self.expiry {
            None => Duration::MAX,
            Some(e) => e.saturating_duration_since(now),
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }

    fn refresh(&mut self, now: Instant, extend: Duration) {
        self.expiry = Some(now + extend + secs(self.effective_ttl()));
    }

    fn record(&self, id: i64) -> Vec<u8> {
        leasepb::Lease { id, ttl: self.ttl, remaining_ttl: self.remaining_ttl }.encode_to_vec()
    }
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(n.max(0) as u64)
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, Lease>,
    /// key -> the lease it is attached to.
    items: HashMap<Vec<u8>, i64>,
    primary: bool,
    expiry_heap: BinaryHeap<Reverse<(Instant, i64)>>,
    checkpoint_heap: BinaryHeap<Reverse<(Instant, i64)>>,
}

fn load_leases(db: &Database) -> Result<HashMap<i64, Lease>, LeaseError> {
    let mut leases = HashMap::new();
    let read = db.begin_read()?;
    let table = read.open_table(LEASE_TABLE)?;
    for row in table.iter()? {
        let (k, v) = row?;
        let l = leasepb::Lease::decode(v.value())?;
        leases.insert(
            k.value(),
            Lease { ttl: l.ttl, remaining_ttl: l.remaining_ttl, expiry: None, next_check: None, keys: BTreeSet::new() },
        );
    }
    Ok(leases)
}

/// The lease table and, on the leader, the expiry schedule.
pub struct Lessor {
    cfg: LessorConfig,
    inner: Mutex<Inner>,
}

impl Lessor {
    /// Loads every lease from the lease table of `db` (creating the table if needed). Leases
    /// start "forever"; [`Lessor::promote`] gives them deadlines on the leader. Keys are
    /// attached afterwards with [`Lessor::attach_existing`].
    pub fn open(db: &Database, cfg: LessorConfig) -> Result<Lessor, LeaseError> {
        let txn = db.begin_write()?;
        txn.open_table(LEASE_TABLE)?;
        txn.commit()?;
        let inner = Inner { leases: load_leases(db)?, ..Default::default() };
        Ok(Lessor { cfg, inner: Mutex::new(inner) })
    }

    /// Replaces every lease with those of the lease table of `db` (after a snapshot replaced
    /// the database). Keys are attached afterwards with [`Lessor::attach_existing`]. A primary
    /// lessor gives every lease a fresh deadline of its remaining TTL from `now`.
    pub fn reload(&self, db: &Database, now: Instant) -> Result<(), LeaseError> {
        let leases = load_leases(db)?;
        let mut g = self.inner.lock();
        let primary = g.primary;
        *g = Inner { leases, ..Default::default() };
        drop(g);
        if primary {
            self.promote(Duration::ZERO, now);
        }
        Ok(())
    }

    /// Attaches keys found in the key table at start (key, lease). A key naming a lease that
    /// does not exist is logged and left alone, as etcd does.
    pub fn attach_existing(&self, items: impl IntoIterator<Item = (Vec<u8>, i64)>) {
        let mut g = self.inner.lock();
        for (key, id) in items {
            if id == 0 {
                continue;
            }
            if g.leases.contains_key(&id) {
                attach(&mut g, id, key);
            } else {
                tracing::error!(lease_id = %format!("{id:016x}"), key = %String::from_utf8_lossy(&key), "key attached to a lease that does not exist");
            }
        }
    }

    pub fn exists(&self, id: i64) -> bool {
        self.inner.lock().leases.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_primary(&self) -> bool {
        self.inner.lock().primary
    }

    // ---- apply side: called only by the applier, inside its batch transaction ----

    /// Grants a lease with exactly `ttl` (the proposer already raised it to the minimum).
    /// Returns the granted TTL.
    pub fn grant(&self, wtx: &WriteTransaction, id: i64, ttl: i64, now: Instant) -> Result<i64, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        let mut g = self.inner.lock();
        if g.leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        let mut l = Lease { ttl, remaining_ttl: 0, expiry: None, next_check: None, keys: BTreeSet::new() };
        wtx.open_table(LEASE_TABLE)?.insert(id, l.record(id).as_slice())?;
        if g.primary {
            l.refresh(now, Duration::ZERO);
        }
        g.leases.insert(id, l);
        crate::metrics::granted(ttl);
        if g.primary {
            register_expiry(&mut g, id);
            self.schedule_checkpoint(&mut g, id, now);
        }
        Ok(ttl)
    }

    /// The keys attached to a lease, sorted (so every member deletes them in the same order).
    pub fn keys(&self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
        let g = self.inner.lock();
        let l = g.leases.get(&id).ok_or(LeaseError::NotFound)?;
        Ok(l.keys.iter().cloned().collect())
    }

    /// Removes a lease after the applier deleted its keys in the same batch.
    pub fn remove(&self, wtx: &WriteTransaction, id: i64) -> Result<(), LeaseError> {
        let mut g = self.inner.lock();
        if !g.leases.contains_key(&id) {
            return Err(LeaseError::NotFound);
        }
        wtx.open_table(LEASE_TABLE)?.remove(id)?;
        crate::metrics::REVOKED.inc();
        if let Some(l) = g.leases.remove(&id) {
            for k in l.keys {
                if g.items.get(&k) == Some(&id) {
                    g.items.remove(&k);
                }
            }
        }
        Ok(())
    }

    /// Records a checkpointed remaining TTL (0 clears it). Unknown leases are ignored, as etcd.
    pub fn checkpoint(&self, wtx: &WriteTransaction, id: i64, remaining_ttl: i64, now: Instant) -> Result<(), LeaseError> {
        let mut g = self.inner.lock();
        let Some(l) = g.leases.get_mut(&id) else { return Ok(()) };
        l.remaining_ttl = remaining_ttl;
        let record = l.record(id);
        wtx.open_table(LEASE_TABLE)?.insert(id, record.as_slice())?;
        if g.primary {
            self.schedule_checkpoint(&mut g, id, now);
        }
        Ok(())
    }

    /// Follows the key table: a put attaches its key to its lease (and detaches it from the
    /// lease it had before), a delete detaches it.
    pub fn apply_events(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut g = self.inner.lock();
        for ev in events {
            let Some(kv) = ev.kv.as_ref() else { continue };
            let prev = ev.prev_kv.as_ref().map(|p| p.lease).unwrap_or(0);
            let new = if ev.r#type == EventType::Put as i32 { kv.lease } else { 0 };
            if prev != 0 && prev != new {
                detach(&mut g, prev, &kv.key);
            }
            if new != 0 {
                attach(&mut g, new, kv.key.clone());
            }
        }
    }

    // ---- the primary's side: local timing, never replicated ----

    /// Makes this lessor primary (the member became leader and applied its term's first
    /// entry): every lease's deadline is its remaining TTL plus `extend` from now, spread so
    /// that at most 3/4 of the revoke rate falls due in any second.
    pub fn promote(&self, extend: Duration, now: Instant) {
        let mut g = self.inner.lock();
        g.primary = true;
        g.expiry_heap.clear();
        g.checkpoint_heap.clear();
        for l in g.leases.values_mut() {
            l.refresh(now, extend);
        }
        if g.leases.len() >= LEASE_REVOKE_RATE {
            spread_expiries(&mut g, extend, now);
        }
        let ids: Vec<i64> = g.leases.keys().copied().collect();
        for id in ids {
            register_expiry(&mut g, id);
            self.schedule_checkpoint(&mut g, id, now);
        }
    }

    /// Stops tracking deadlines (leadership lost): every lease lives "forever" here.
    pub fn demote(&self) {
        let mut g = self.inner.lock();
        g.primary = false;
        for l in g.leases.values_mut() {
            l.expiry = None;
            l.next_check = None;
        }
        g.expiry_heap.clear();
        g.checkpoint_heap.clear();
    }

    /// A keep-alive: restarts the lease's full TTL and returns it. Also says whether a
    /// checkpoint clearing a stored remaining TTL must be proposed (etcd's rule, so a restart
    /// does not bring back an old remaining TTL).
    pub fn renew(&self, id: i64, now: Instant) -> Result<(i64, bool), LeaseError> {
        let mut g = self.inner.lock();
        if !g.primary {
            return Err(LeaseError::NotPrimary);
        }
        let checkpoint_enabled = self.cfg.checkpoint_enabled;
        let l = g.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if l.expired(now) {
            return Err(LeaseError::Expired);
        }
        let clear = checkpoint_enabled && l.remaining_ttl > 0;
        l.expiry = Some(now + secs(l.ttl));
        let ttl = l.ttl;
        register_expiry(&mut g, id);
        crate::metrics::RENEWED.inc();
        Ok((ttl, clear))
    }

    /// A lease's TTLs and, when asked, its keys.
    pub fn time_to_live(&self, id: i64, with_keys: bool, now: Instant) -> Option<LeaseStatus> {
        let g = self.inner.lock();
        let l = g.leases.get(&id)?;
        Some(LeaseStatus {
            id,
            granted_ttl: l.ttl,
            // "forever" is Go's maximal Duration, as etcd reports it
            remaining: if l.expiry.is_none() { FOREVER_SECS } else { l.remaining(now).as_secs() as i64 },
            keys: if with_keys { l.keys.iter().cloned().collect() } else { Vec::new() },
        })
    }

    /// Every lease ID, soonest deadline first (ties by ID).
    pub fn leases(&self, now: Instant) -> Vec<i64> {
        let g = self.inner.lock();
        let mut v: Vec<(Duration, i64)> = g.leases.iter().map(|(id, l)| (l.remaining(now), *id)).collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Up to `limit` leases past their deadline, to be revoked through raft. Each is
    /// rescheduled [`EXPIRED_RETRY_INTERVAL`] later in case its revoke does not get applied.
    pub fn find_expired(&self, limit: usize, now: Instant) -> Vec<i64> {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        if !g.primary {
            return out;
        }
        while out.len() < limit {
            let Some(&Reverse((t, id))) = g.expiry_heap.peek() else { break };
            if t > now {
                break;
            }
            g.expiry_heap.pop();
            let Some(l) = g.leases.get_mut(&id) else { continue };
            if l.next_check != Some(t) {
                continue; // superseded by a later keep-alive
            }
            if !l.expired(now) {
                continue;
            }
            let retry = now + EXPIRED_RETRY_INTERVAL;
            l.next_check = Some(retry);
            g.expiry_heap.push(Reverse((retry, id)));
            out.push(id);
        }
        out
    }

    /// Checkpoints that are due: (lease ID, remaining TTL in whole seconds, rounded up).
    pub fn due_checkpoints(&self, limit: usize, now: Instant) -> Vec<(i64, i64)> {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        if !g.primary || !self.cfg.checkpoint_enabled {
            return out;
        }
        while out.len() < limit {
            let Some(&Reverse((t, id))) = g.checkpoint_heap.peek() else { break };
            if t > now {
                break;
            }
            g.checkpoint_heap.pop();
            let Some(l) = g.leases.get(&id) else { continue };
            let Some(expiry) = l.expiry else { continue };
            if expiry <= now {
                continue;
            }
            let left = expiry - now;
            let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
            if remaining >= l.ttl {
                continue;
            }
            out.push((id, remaining));
        }
        out
    }

    /// Schedules the lease's next checkpoint (after a grant, a promotion or a checkpoint, as
    /// etcd; keep-alives do not add any).
    fn schedule_checkpoint(&self, g: &mut Inner, id: i64, now: Instant) {
        if !self.cfg.checkpoint_enabled {
            return;
        }
        let Some(l) = g.leases.get(&id) else { return };
        if l.effective_ttl() > self.cfg.checkpoint_interval.as_secs() as i64 {
            g.checkpoint_heap.push(Reverse((now + self.cfg.checkpoint_interval, id)));
        }
    }
}

/// Puts a lease (if it has a deadline) on the expiry heap under that deadline; an entry left
/// from an earlier deadline is skipped when it surfaces.
fn register_expiry(g: &mut Inner, id: i64) {
    let Some(l) = g.leases.get_mut(&id) else { return };
    let Some(expiry) = l.expiry else { return };
    l.next_check = Some(expiry);
    g.expiry_heap.push(Reverse((expiry, id)));
}

fn attach(g: &mut Inner, id: i64, key: Vec<u8>) {
    if let Some(l) = g.leases.get_mut(&id) {
        l.keys.insert(key.clone());
        g.items.insert(key, id);
    }
}

fn detach(g: &mut Inner, id: i64, key: &[u8]) {
    if let Some(l) = g.leases.get_mut(&id) {
        l.keys.remove(key);
    }
    if g.items.get(key) == Some(&id) {
        g.items.remove(key);
    }
}

/// etcd's pile-up avoidance on promotion: walking leases by deadline, once more than 3/4 of the
/// revoke rate would fall due within one second, later ones are pushed back proportionally.
fn spread_expiries(g: &mut Inner, extend: Duration, now: Instant) {
    let mut order: Vec<(Duration, i64)> = g.leases.iter().map(|(id, l)| (l.remaining(now), *id)).collect();
    order.sort();
    let Some(&(first, _)) = order.first() else { return };
    let target = (3 * LEASE_REVOKE_RATE / 4) as f64;
    let mut base = first;
    let mut next_window = base + Duration::from_secs(1);
    let mut expires: usize = 0;
    for (remaining, id) in order {
        if remaining > next_window {
            base = remaining;
            next_window = base + Duration::from_secs(1);
            expires = 1;
            continue;
        }
        expires += 1;
        if expires as f64 <= target {
            continue;
        }
        let delay = Duration::from_secs_f64(expires as f64 / target).saturating_sub(remaining.saturating_sub(base));
        next_window = base + delay;
        if let Some(l) = g.leases.get_mut(&id) {
            l.refresh(now, delay + extend);
        }
    }
}
