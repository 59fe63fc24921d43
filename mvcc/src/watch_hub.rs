//! `WatchHub`: every watcher of the member, fed by the applier and by catch-up reads
//! (etcd's `watchableStore`).
//!
//! A watcher is in exactly one state:
//! - **synced**: it has been sent (or queued) every event up to the hub's revision; the
//!   applier's [`WatchHub::notify`] hands it new events directly;
//! - **unsynced**: it still needs events from `min_rev` on; the sync thread reads them from the
//!   key table at published revisions in bounded batches and moves it to synced once caught up;
//! - **victim**: its stream's queue was full; it holds the one response that did not fit and
//!   gets no more events until that response is queued, then it continues unsynced.
//!
//! Invariants (the guarantees etcd documents):
//! - every watcher gets each matching event exactly once, in revision order, all events of a
//!   revision in one response (the gRPC layer may fragment it when asked);
//! - `min_rev` is the next revision a watcher needs: notify skips events below it, so a
//!   watcher moved to synced by a catch-up that already read a revision is not sent it again;
//! - the hub's revision moves only in `notify`, under the hub lock, after the revision is
//!   published: a catch-up read at that revision sees every row of it, and a watcher found
//!   caught up to it under the lock misses nothing;
//! - a progress response at revision R is queued only for a synced watcher (or a stream whose
//!   watchers are all synced), behind every event <= R it needs, in the same queue;
//! - the applier never waits for a watcher: queues are bounded and a full one makes victims;
//! - a watcher whose next revision is below the compact revision is cancelled with
//!   `compact_revision` set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::Event;
use parking_lot::Mutex;

use crate::kv_view::decode_kv;
use crate::revision::{main_rev_bound, Revision};
use crate::watch_queue::{Kick, StreamQueue, WatchMessage};
use crate::watcher_group::{KeyRange, WatcherGroup};
use crate::{KvStore, MvccError};

/// A create request's watch_id of 0 asks the stream to choose one (clientv3's AutoWatchID).
pub const AUTO_WATCH_ID: i64 = 0;
/// The watch_id of refused watchers and of stream-wide progress responses.
pub const INVALID_WATCH_ID: i64 = -1;

/// etcd's mvcc error for a create request whose range is empty.
pub const ERR_EMPTY_WATCHER_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's mvcc error for a client-chosen watch_id already used on the stream.
pub const ERR_DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// Bounds of the hub; the defaults follow etcd where etcd has one.
#[derive(Debug, Clone)]
pub struct WatchHubOptions {
    /// Responses a stream queue holds before its watchers become victims (etcd: 128).
    pub queue_responses: usize,
    /// Bytes of events a stream queue holds before its watchers become victims.
    pub queue_bytes: usize,
    /// Key-table rows one catch-up read takes (a revision is never split).
    pub batch_rows: usize,
    /// Bytes of values one catch-up read takes.
    pub batch_bytes: usize,
    /// Unsynced watchers served by one catch-up read (etcd: 512).
    pub watchers_per_sync: usize,
}

impl Default for WatchHubOptions {
    fn default() -> Self {
        WatchHubOptions {
            queue_responses: 128,
            queue_bytes: 4 * 1024 * 1024,
            batch_rows: 1000,
            batch_bytes: 1024 * 1024,
            watchers_per_sync: 512,
        }
    }
}

/// A create request, as the gRPC layer normalized it.
#[derive(Debug, Clone, Default)]
pub struct WatchCreate {
    /// 0 = let the stream choose.
    pub watch_id: i64,
    pub key: Vec<u8>,
    /// As in a request: empty = the single key, `"\0"` = every key `>= key`, else `[key, end)`.
    pub range_end: Vec<u8>,
    /// 0 = from the next revision; past = replay history; future = wait for it.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

enum Pending {
    Events { events: Vec<Arc<Event>>, revision: i64, next_min_rev: i64 },
    Compacted(i64),
}

enum State {
    Synced,
    Unsynced,
    Victim(Pending),
}

struct Watcher {
    stream: u64,
    id: i64,
    range: KeyRange,
    min_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Events were queued since the last periodic progress tick (the tick is then elided).
    sent_since_tick: bool,
    state: State,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        let is_put = ev.r#type == EventType::Put as i32;
        !(is_put && self.no_put || !is_put && self.no_delete)
    }

    fn events_msg(&self, events: Vec<Arc<Event>>, revision: i64) -> WatchMessage {
        WatchMessage::Events {
            watch_id: self.id,
            revision,
            events,
            prev_kv: self.prev_kv,
            fragment: self.fragment,
        }
    }
}

struct StreamEntry {
    queue: Arc<StreamQueue>,
    ids: BTreeMap<i64, u64>,
    next_id: i64,
    deferred_progress: bool,
}

struct HubState {
    /// The newest revision handed to `notify`.
    rev: i64,
    watchers: HashMap<u64, Watcher>,
    streams: HashMap<u64, StreamEntry>,
    synced: WatcherGroup,
    unsynced: BTreeSet<u64>,
    victims: BTreeSet<u64>,
    next_key: u64,
    /// Where the next catch-up round starts choosing unsynced watchers (round robin).
    sync_cursor: u64,
    stopped: bool,
    /// Number of watchers asking for prev_kv; changed only under the state lock (so exact
    /// there), read without it as the applier's hint (see [`WatchHub::wants_prev_kv`]).
    prev_kv_watchers: Arc<AtomicUsize>,
}

/// The member's watchers. Create with [`WatchHub::new`], run the sync thread with
/// [`WatchHub::start`], feed with [`WatchHub::notify`] after each applied batch.
pub struct WatchHub {
    store: Arc<KvStore>,
    /// The state's count of prev_kv watchers, readable without its lock.
    prev_kv_watchers: Arc<AtomicUsize>,
    state: Mutex<HubState>,
    kick: Arc<Kick>,
    opts: WatchHubOptions,
}

fn mod_rev(ev: &Event) -> i64 {
    ev.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)
}

fn ev_key(ev: &Event) -> &[u8] {
    ev.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or(&[])
}

impl HubState {
    /// Queues events for a synced watcher or turns it into a victim holding them.
    fn send_synced(&mut self, w: u64, events: Vec<Arc<Event>>, rev: i64, kick: &Kick) {
        let Some(wa) = self.watchers.get_mut(&w) else { return };
        let Some(stream) = self.streams.get(&wa.stream) else { return };
        match stream.queue.try_push(wa.events_msg(events, rev)) {
            Ok(()) => {
                wa.sent_since_tick = true;
                wa.min_rev = rev + 1;
            }
            Err(WatchMessage::Events { events, .. }) => {
                crate::metrics::PENDING_EVENTS.add(events.len() as i64);
                self.synced.remove(w, &wa.range);
                wa.state = State::Victim(Pending::Events {
                    events,
                    revision: rev,
                    next_min_rev: rev + 1,
                });
                self.victims.insert(w);
                kick.kick();
            }
            Err(_) => unreachable!("try_push gives back what it was given"),
        }
    }

    fn make_synced_or_unsynced(&mut self, w: u64) {
        let rev = self.rev;
        let Some(wa) = self.watchers.get_mut(&w) else { return };
        if wa.min_rev > rev {
            wa.state = State::Synced;
            self.unsynced.remove(&w);
            self.synced.add(w, &wa.range);
        } else {
            wa.state = State::Unsynced;
            self.unsynced.insert(w);
        }
    }

    fn remove_watcher(&mut self, w: u64) -> Option<Watcher> {
        let wa = self.watchers.remove(&w)?;
        if wa.prev_kv {
            self.prev_kv_watchers.fetch_sub(1, Ordering::Relaxed);
        }
        match wa.state {
            State::Synced => self.synced.remove(w, &wa.range),
            State::Unsynced => {
                self.unsynced.remove(&w);
            }
            State::Victim(_) => {
                self.victims.remove(&w);
            }
        }
        if let Some(s) = self.streams.get_mut(&wa.stream) {
            if s.ids.get(&wa.id) == Some(&w) {
                s.ids.remove(&wa.id);
            }
        }
        Some(wa)
    }

    /// Sends a stream's deferred progress response once all its watchers are synced.
    fn flush_deferred_progress(&mut self, stream: u64) {
        let rev = self.rev;
        let Some(s) = self.streams.get(&stream) else { return };
        if !s.deferred_progress {
            return;
        }
        let all_synced = s
            .ids
            .values()
            .all(|w| matches!(self.watchers.get(w).map(|wa| &wa.state), Some(State::Synced)));
        if all_synced {
            s.queue.push_control(WatchMessage::Progress {
                watch_id: INVALID_WATCH_ID,
                revision: rev,
            });
            if let Some(s) = self.streams.get_mut(&stream) {
                s.deferred_progress = false;
            }
        }
    }
}

impl WatchHub {
    /// A hub at the store's current revision. Create it before the applier applies anything.
    pub fn new(store: Arc<KvStore>, opts: WatchHubOptions) -> Arc<WatchHub> {
        let rev = store.current_revision();
        let prev_kv_watchers = Arc::new(AtomicUsize::new(0));
        Arc::new(WatchHub {
            store,
            prev_kv_watchers: prev_kv_watchers.clone(),
            state: Mutex::new(HubState {
                rev,
                watchers: HashMap::new(),
                streams: HashMap::new(),
                synced: WatcherGroup::default(),
                unsynced: BTreeSet::new(),
                victims: BTreeSet::new(),
                next_key: 1,
                sync_cursor: 0,
                stopped: false,
                prev_kv_watchers,
            }),
            kick: Arc::new(Kick::default()),
            opts,
        })
    }

    /// Starts the sync thread: catch-up reads for unsynced watchers and retries of victims.
    pub fn start(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let hub = self.clone();
        std::thread::Builder::new()
            .name("watch-sync".into())
            .spawn(move || hub.run())
    }

    fn run(&self) {
        loop {
            if self.state.lock().stopped {
                break;
            }
            let more = match self.sync_round() {
                Ok(more) => more,
                Err(e) => {
                    tracing::error!(error = %e, "watch catch-up read failed; retrying");
                    false
                }
            };
            if !more {
                // victims are retried when their queue drains (a kick) or every 10 ms, as etcd
                let idle = self.state.lock().victims.is_empty();
                self.kick.wait(if idle {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(10)
                });
            }
        }
    }

    /// Stops the sync thread and closes every stream.
    pub fn stop(&self) {
        let mut st = self.state.lock();
        st.stopped = true;
        for s in st.streams.values() {
            s.queue.close();
        }
        drop(st);
        self.kick.kick();
    }

    /// The newest revision watchers have been notified of.
    pub fn revision(&self) -> i64 {
        self.state.lock().rev
    }

    /// (watchers, synced-or-victim-free count) for tests and metrics: total, unsynced, victims.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.state.lock();
        (st.watchers.len(), st.unsynced.len(), st.victims.len())
    }

    /// A new stream: many watchers sharing one ordered queue.
    pub fn open_stream(self: &Arc<Self>) -> WatchStream {
        let queue = Arc::new(StreamQueue::new(
            self.opts.queue_responses,
            self.opts.queue_bytes,
            self.kick.clone(),
        ));
        crate::metrics::WATCH_STREAMS.inc();
        let mut st = self.state.lock();
        let key = st.next_key;
        st.next_key += 1;
        if st.stopped {
            queue.close();
        }
        st.streams.insert(
            key,
            StreamEntry {
                queue: queue.clone(),
                ids: BTreeMap::new(),
                next_id: 0,
                deferred_progress: false,
            },
        );
        WatchStream {
            hub: self.clone(),
            key,
            queue,
        }
    }

    /// Hands the events of an applied batch (in revision order, as `ApplyTxn::commit` returns
    /// them) to the synced watchers. Call after the batch's revision is published.
    /// Whether some watcher asks for prev_kv: the applier reads a put's previous value for its
    /// event only then (or when leases need it). A hint: a watcher may come or go right after;
    /// [`WatchHub::notify`] fills what a batch applied without it lacks.
    pub fn wants_prev_kv(&self) -> bool {
        self.prev_kv_watchers.load(Ordering::Relaxed) > 0
    }

    /// Hands the hub the events of an applied (committed) batch, in revision order.
    /// `prev_kv_complete` is false when the applier skipped reading puts' previous values (no
    /// prev_kv watcher when it applied them); they are then read here if a synced watcher needs
    /// them, as a catch-up read would (none once compacted away, as etcd).
    pub fn notify(&self, events: Vec<Event>, prev_kv_complete: bool) {
        if events.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        let mut events = events;
        if !prev_kv_complete && st.prev_kv_watchers.load(Ordering::Relaxed) > 0 {
            if let Err(e) = self.store.fill_prev_kvs(&mut events) {
                tracing::warn!(error = %e, "could not read prev_kv for watch events");
            }
        }
        let mut events = events.into_iter().map(Arc::new).peekable();
        while let Some(first) = events.next() {
            let rev = mod_rev(&first);
            let mut group = vec![first];
            while let Some(ev) = events.next_if(|e| mod_rev(e) == rev) {
                group.push(ev);
            }
            if !st.synced.is_empty() {
                let mut batch: BTreeMap<u64, Vec<Arc<Event>>> = BTreeMap::new();
                for ev in &group {
                    for w in st.synced.matching(ev_key(ev)) {
                        if let Some(wa) = st.watchers.get(&w) {
                            if rev >= wa.min_rev && wa.wants(ev) {
                                batch.entry(w).or_default().push(ev.clone());
                            }
                        }
                    }
                }
                for (w, evs) in batch {
                    st.send_synced(w, evs, rev, &self.kick);
                }
            }
            st.rev = st.rev.max(rev);
        }
    }

    /// After the store was replaced by a snapshot (its revision jumped past events no synced
    /// watcher was sent): every synced watcher goes back to unsynced and catches up from the
    /// new key table — or is cancelled with `compact_revision` if that history is compacted.
    pub fn restore(&self) {
        let mut st = self.state.lock();
        let synced: Vec<u64> = st
            .watchers
            .iter()
            .filter(|(_, wa)| matches!(wa.state, State::Synced))
            .map(|(w, _)| *w)
            .collect();
        for w in synced {
            if let Some(wa) = st.watchers.get_mut(&w) {
                wa.state = State::Unsynced;
                let range = wa.range.clone();
                st.synced.remove(w, &range);
                st.unsynced.insert(w);
            }
        }
        st.rev = st.rev.max(self.store.current_revision());
        drop(st);
        self.kick.kick();
    }

    /// One round of the sync thread; true when unsynced watchers are left to serve at once.
    fn sync_round(&self) -> Result<bool, MvccError> {
        self.retry_victims();

        // choose unsynced watchers, round robin
        let (cur, chosen) = {
            let mut st = self.state.lock();
            if st.unsynced.is_empty() {
                return Ok(false);
            }
            let cursor = st.sync_cursor;
            let mut chosen: Vec<u64> = st
                .unsynced
                .range(cursor..)
                .chain(st.unsynced.range(..cursor))
                .take(self.opts.watchers_per_sync)
                .copied()
                .collect();
            chosen.sort_unstable();
            st.sync_cursor = st
                .unsynced
                .range(chosen.last().map_or(0, |l| l + 1)..)
                .next()
                .copied()
                .unwrap_or(0);
            let picked: Vec<(u64, KeyRange, i64, bool)> = chosen
                .iter()
                .filter_map(|w| {
                    st.watchers
                        .get(w)
                        .map(|wa| (*w, wa.range.clone(), wa.min_rev, wa.prev_kv))
                })
                .collect();
            (st.rev, picked)
        };

        // read their events at `cur` (published: notify runs after publishing)
        let compact = self.store.compact_revision();
        let from = chosen
            .iter()
            .filter(|(_, _, min, _)| *min >= compact)
            .map(|(_, _, min, _)| *min)
            .min();
        let (events, end) = match from {
            Some(from) if from <= cur => self.store.watch_events(
                from,
                cur,
                |key| {
                    let mut any = false;
                    let mut prev = false;
                    for (_, r, _, p) in &chosen {
                        if r.contains(key) {
                            any = true;
                            prev |= *p;
                        }
                    }
                    (any, prev)
                },
                self.opts.batch_rows,
                self.opts.batch_bytes,
            )?,
            _ => (Vec::new(), cur),
        };
        // a compaction that finished before the read may have removed rows it needed
        let compact = self.store.compact_revision();
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();

        let mut guard = self.state.lock();
        let st: &mut HubState = &mut guard;
        let mut streams = BTreeSet::new();
        for (w, _, min_rev, _) in &chosen {
            let w = *w;
            let Some(wa) = st.watchers.get_mut(&w) else { continue };
            if !matches!(wa.state, State::Unsynced) || wa.min_rev != *min_rev {
                continue;
            }
            let stream = wa.stream;
            streams.insert(stream);
            if wa.min_rev < compact {
                let msg = WatchMessage::Compacted {
                    watch_id: wa.id,
                    compact_revision: compact,
                };
                let pushed = st.streams.get(&stream).is_some_and(|s| s.queue.try_push(msg).is_ok());
                if pushed {
                    st.remove_watcher(w);
                } else {
                    st.unsynced.remove(&w);
                    wa_victim(st, w, Pending::Compacted(compact));
                    self.kick.kick();
                }
                continue;
            }
            if wa.min_rev > end {
                continue; // a batch stopped short of it: next round
            }
            let evs: Vec<Arc<Event>> = events
                .iter()
                .filter(|e| mod_rev(e) >= wa.min_rev && wa.range.contains(ev_key(e)) && wa.wants(e))
                .cloned()
                .collect();
            wa.min_rev = end + 1;
            if !evs.is_empty() {
                let msg = wa.events_msg(evs, end);
                let pushed = match st.streams.get(&stream) {
                    Some(s) => s.queue.try_push(msg),
                    None => continue,
                };
                match pushed {
                    Ok(()) => {
                        if let Some(wa) = st.watchers.get_mut(&w) {
                            wa.sent_since_tick = true;
                        }
                    }
                    Err(WatchMessage::Events { events, .. }) => {
                        crate::metrics::PENDING_EVENTS.add(events.len() as i64);
                        st.unsynced.remove(&w);
                        let pending = Pending::Events {
                            events,
                            revision: end,
                            next_min_rev: end + 1,
                        };
                        wa_victim(st, w, pending);
                        self.kick.kick();
                        continue;
                    }
                    Err(_) => unreachable!("try_push gives back what it was given"),
                }
            }
            st.make_synced_or_unsynced(w);
        }
        for s in streams {
            st.flush_deferred_progress(s);
        }
        Ok(!st.unsynced.is_empty())
    }

    /// Queues what each victim holds if its queue has room now; it then continues unsynced.
    fn retry_victims(&self) {
        let mut guard = self.state.lock();
        let st: &mut HubState = &mut guard;
        let victims: Vec<u64> = st.victims.iter().copied().collect();
        let mut streams = BTreeSet::new();
        for w in victims {
            let Some(wa) = st.watchers.get_mut(&w) else {
                st.victims.remove(&w);
                continue;
            };
            let Some(queue) = st.streams.get(&wa.stream).map(|s| s.queue.clone()) else {
                continue;
            };
            if !queue.has_room() {
                continue;
            }
            let State::Victim(pending) = std::mem::replace(&mut wa.state, State::Unsynced) else {
                continue;
            };
            let msg = match &pending {
                Pending::Events { events, revision, .. } => wa.events_msg(events.clone(), *revision),
                Pending::Compacted(c) => WatchMessage::Compacted {
                    watch_id: wa.id,
                    compact_revision: *c,
                },
            };
            if queue.try_push(msg).is_err() {
                wa.state = State::Victim(pending);
                continue;
            }
            st.victims.remove(&w);
            match pending {
                Pending::Compacted(_) => {
                    st.remove_watcher(w);
                }
                Pending::Events { next_min_rev, .. } => {
                    if let Some(wa) = st.watchers.get_mut(&w) {
                        wa.min_rev = next_min_rev;
                        wa.sent_since_tick = true;
                        streams.insert(wa.stream);
                    }
                    st.make_synced_or_unsynced(w);
                }
            }
        }
        for s in streams {
            st.flush_deferred_progress(s);
        }
    }
}

fn wa_victim(st: &mut HubState, w: u64, pending: Pending) {
    if let Some(wa) = st.watchers.get_mut(&w) {
        wa.state = State::Victim(pending);
        st.victims.insert(w);
    }
}

impl KvStore {
    /// Fills prev_kv of put events that lack it and did not create their key: the key's value
    /// at the revision before the event's, unless compacted away.
    pub(crate) fn fill_prev_kvs(&self, events: &mut [Event]) -> Result<(), MvccError> {
        let (rows, _txn) = self.read_rows()?;
        let compacted = self.compact_revision();
        for ev in events.iter_mut() {
            let Some(kv) = ev.kv.as_ref() else { continue };
            let is_put = ev.r#type == EventType::Put as i32;
            if !is_put || ev.prev_kv.is_some() || kv.create_revision == kv.mod_revision {
                continue;
            }
            if kv.mod_revision <= compacted {
                continue;
            }
            if let Some(at) = self.index.get(&kv.key, kv.mod_revision - 1) {
                ev.prev_kv = rows.find(at.modified)?;
            }
        }
        Ok(())
    }

    /// The events of the key table with main revision in `[from, to]`, for watchers catching
    /// up: only keys `wanted` says some watcher needs, prev_kv filled where it says so (unless
    /// compacted away, as etcd). Reads whole revisions until `max_rows` rows or `max_bytes` of
    /// values are read; returns the events and the last revision covered.
    pub(crate) fn watch_events(
        &self,
        from: i64,
        to: i64,
        wanted: impl Fn(&[u8]) -> (bool, bool),
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        let (table, _txn) = self.read_rows()?;
        let (lo, hi) = (main_rev_bound(from.max(1)), main_rev_bound(to + 1));
        let mut events = Vec::new();
        let (mut rows, mut bytes) = (0usize, 0usize);
        let mut stop_after: Option<i64> = None;
        let mut end = to;
        table.scan(&lo, &hi, |k, v| {
            let (rev, tombstone) = Revision::from_key_bytes(k)?;
            if let Some(last) = stop_after {
                if rev.main != last {
                    end = last;
                    return Ok(ControlFlow::Break(()));
                }
            }
            rows += 1;
            bytes += v.len();
            if stop_after.is_none() && (rows >= max_rows || bytes >= max_bytes) {
                stop_after = Some(rev.main);
            }
            let mut kv = decode_kv(v, rev)?;
            let (any, prev) = wanted(&kv.key);
            if !any {
                return Ok(ControlFlow::Continue(()));
            }
            let r#type = if tombstone {
                kv.mod_revision = rev.main;
                EventType::Delete
            } else {
                EventType::Put
            };
            let is_create = !tombstone && kv.create_revision == kv.mod_revision;
            let prev_kv = if prev && !is_create && rev.main > self.compact_revision() {
                match self.index.get(&kv.key, rev.main - 1) {
                    Some(at) => table.find(at.modified)?,
                    None => None,
                }
            } else {
                None
            };
            events.push(Event {
                r#type: r#type as i32,
                kv: Some(kv),
                prev_kv,
            });
            Ok(ControlFlow::Continue(()))
        })?;
        Ok((events, end))
    }
}

/// One client stream's view of the hub. Dropping it cancels its watchers.
pub struct WatchStream {
    hub: Arc<WatchHub>,
    key: u64,
    queue: Arc<StreamQueue>,
}

impl WatchStream {
    /// Creates a watcher; its `Created` response (or the refusal) is queued before any of its
    /// events.
    pub fn watch(&self, req: WatchCreate) {
        let hub = &self.hub;
        let mut st = hub.state.lock();
        let rev = st.rev;
        let refuse = |st: &HubState, reason: &str| {
            if let Some(s) = st.streams.get(&self.key) {
                s.queue.push_control(WatchMessage::Created {
                    watch_id: INVALID_WATCH_ID,
                    revision: rev,
                    cancel_reason: Some(reason.to_string()),
                });
            }
        };
        let end = match req.range_end.as_slice() {
            [] => None,
            [0] => Some(Vec::new()),
            e => Some(e.to_vec()),
        };
        if matches!(&end, Some(e) if !e.is_empty() && req.key.as_slice() >= e.as_slice()) {
            refuse(&st, ERR_EMPTY_WATCHER_RANGE);
            return;
        }
        let wkey = st.next_key;
        let Some(stream) = st.streams.get_mut(&self.key) else { return };
        let id = if req.watch_id == AUTO_WATCH_ID {
            while stream.ids.contains_key(&stream.next_id) {
                stream.next_id += 1;
            }
            stream.next_id += 1;
            stream.next_id - 1
        } else if stream.ids.contains_key(&req.watch_id) {
            refuse(&st, ERR_DUPLICATE_WATCH_ID);
            return;
        } else {
            req.watch_id
        };
        stream.ids.insert(id, wkey);
        stream.queue.push_control(WatchMessage::Created {
            watch_id: id,
            revision: rev,
            cancel_reason: None,
        });
        st.next_key += 1;
        let start = req.start_revision;
        // etcd's store starts "never compacted" at -1: a start below it is compacted
        let compact = match self_compact(&hub.store) {
            0 => -1,
            c => c,
        };
        let (min_rev, synced) = if start == 0 || start > rev {
            (if start == 0 { rev + 1 } else { start }, true)
        } else if start < 0 && start >= compact {
            (rev + 1, true)
        } else {
            (start, false)
        };
        let range = KeyRange { key: req.key, end };
        let mut wa = Watcher {
            stream: self.key,
            id,
            range,
            min_rev,
            prev_kv: req.prev_kv,
            no_put: req.no_put,
            no_delete: req.no_delete,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            sent_since_tick: false,
            state: State::Unsynced,
        };
        if synced {
            wa.state = State::Synced;
            st.synced.add(wkey, &wa.range);
        } else if start < 0 {
            // below etcd's initial compact revision: cancelled at once
            let queue = self.queue.clone();
            queue.push_control(WatchMessage::Compacted {
                watch_id: id,
                compact_revision: compact,
            });
            if let Some(s) = st.streams.get_mut(&self.key) {
                s.ids.remove(&id);
            }
            return;
        } else {
            st.unsynced.insert(wkey);
            hub.kick.kick();
        }
        if wa.prev_kv {
            st.prev_kv_watchers.fetch_add(1, Ordering::Relaxed);
        }
        st.watchers.insert(wkey, wa);
    }

    /// Cancels a watcher; etcd answers only when it existed.
    pub fn cancel(&self, watch_id: i64) {
        let mut st = self.hub.state.lock();
        let Some(w) = st.streams.get(&self.key).and_then(|s| s.ids.get(&watch_id).copied()) else {
            return;
        };
        st.remove_watcher(w);
        let rev = st.rev;
        if let Some(s) = st.streams.get(&self.key) {
            s.queue.push_control(WatchMessage::Canceled { watch_id, revision: rev });
        }
        st.flush_deferred_progress(self.key);
    }

    /// A stream-wide progress request: answered (watch_id -1, the hub's revision) once every
    /// watcher of the stream is synced, behind their pending events.
    pub fn request_progress(&self) {
        let mut st = self.hub.state.lock();
        if let Some(s) = st.streams.get_mut(&self.key) {
            s.deferred_progress = true;
        }
        st.flush_deferred_progress(self.key);
    }

    /// The periodic progress tick: each synced watcher with progress_notify that was sent no
    /// events since the last tick gets a progress response (skipped when the queue is full).
    pub fn progress_tick(&self) {
        let mut st = self.hub.state.lock();
        let rev = st.rev;
        let Some(ids) = st.streams.get(&self.key).map(|s| s.ids.values().copied().collect::<Vec<_>>()) else {
            return;
        };
        for w in ids {
            let Some(wa) = st.watchers.get_mut(&w) else { continue };
            if !wa.progress_notify {
                continue;
            }
            if std::mem::take(&mut wa.sent_since_tick) {
                continue;
            }
            if matches!(wa.state, State::Synced) {
                let _ = self.queue.try_push(WatchMessage::Progress {
                    watch_id: wa.id,
                    revision: rev,
                });
            }
        }
    }

    /// The hub's revision (what a created or canceled response reports).
    pub fn revision(&self) -> i64 {
        self.hub.revision()
    }

    /// The next response for the client; `None` once the hub stopped.
    pub async fn recv(&self) -> Option<WatchMessage> {
        self.queue.recv().await
    }

    /// Waits until the stream may take more control responses.
    pub async fn control_room(&self) {
        self.queue.control_room().await
    }

    /// Responses queued for the client.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

fn self_compact(store: &KvStore) -> i64 {
    store.compact_revision()
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        crate::metrics::WATCH_STREAMS.dec();
        let mut st = self.hub.state.lock();
        let Some(s) = st.streams.get(&self.key) else { return };
        let ws: Vec<u64> = s.ids.values().copied().collect();
        for w in ws {
            st.remove_watcher(w);
        }
        st.streams.remove(&self.key);
        self.queue.close();
    }
}
