//! The checks made after every step of a migration or fault sequence.
//!
//! Invariant: a step passes only when (1) no member the test wants up has exited, (2) the watcher
//! has reached the last acknowledged revision and saw every revision from 2 on exactly once and in
//! order (the writer is the only client and puts one key per revision, so revisions have no
//! holes), each event being a put the writer made — the acknowledged one at that revision, or one
//! whose outcome is unknown, (3) every acknowledged put is readable at its revision with its
//! value, and (4) every serving voter answers HashKV at that revision with the same hash.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::RangeRequest;
use etcd_robustness::client::{channel, REQUEST_TIMEOUT};
use etcd_robustness::hashkv::check_hashkv;

use super::fleet::Fleet;
use super::load::{lock_ledger, lock_watched, Ack, Load, Seen};

/// How long members and the watcher may take to reach the checked revision.
const CATCH_UP: Duration = Duration::from_secs(45);
/// Reads of acknowledged puts in flight at once.
const READS_IN_FLIGHT: usize = 16;

/// Remembers how far earlier steps verified, so each step reads only the new puts.
#[derive(Default)]
pub struct Checker {
    acks_read: usize,
    pub steps: usize,
    started: Option<Instant>,
}

impl Checker {
    /// Runs every check after `step`; Err says which failed and why, with the logs of members
    /// that exited meanwhile (a check failing because a member died names the death).
    pub async fn step(&mut self, step: &str, fleet: &mut Fleet, load: &Load) -> Result<(), String> {
        let result = self.check(step, fleet, load).await;
        result.map_err(|e| {
            let crashed = fleet.crashed();
            let e = format!("after step \"{step}\": {e}");
            if crashed.is_empty() {
                e
            } else {
                format!("{e}\n{}", crashed.join("\n"))
            }
        })
    }

    async fn check(&mut self, step: &str, fleet: &mut Fleet, load: &Load) -> Result<(), String> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let crashed = fleet.crashed();
        if !crashed.is_empty() {
            return Err(crashed.join("\n"));
        }
        load.endpoints.set(fleet.voter_urls());
        let revision = load.last_acked_revision();
        wait_watcher(load, revision).await?;
        check_watched(load)?;
        let new_acks: Vec<Ack> = lock_ledger(load).acked[self.acks_read..].to_vec();
        read_acks(&fleet.voter_urls(), &new_acks).await?;
        self.acks_read += new_acks.len();
        let hashes = check_hashkv(&fleet.voter_urls(), revision, CATCH_UP).await?;
        self.steps += 1;
        let (acked, unknown) = {
            let l = lock_ledger(load);
            (l.acked.len(), l.unknown.len())
        };
        eprintln!(
            "[{:>5.1}s] ok: {step}: {} | rev {revision}, {acked} acked, {unknown} unknown, {} watch streams, hash {:x} on {} voters",
            started.elapsed().as_secs_f64(),
            fleet.describe().await,
            lock_watched(load).streams,
            hashes.first().map_or(0, |h| h.hash),
            hashes.len(),
        );
        Ok(())
    }
}

/// Waits until the watcher received revision `revision`.
async fn wait_watcher(load: &Load, revision: i64) -> Result<(), String> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let next = lock_watched(load).next_revision;
        if next > revision {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the watcher is stuck before revision {next}, the last acknowledged put is at {revision}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every revision from 2 once and in order, each a put the writer made.
fn check_watched(load: &Load) -> Result<(), String> {
    // Events first: a put the watcher saw was in flight, or answered, before the ledger is read.
    let events = {
        let w = lock_watched(load);
        if let Some(a) = w.anomalies.first() {
            return Err(a.clone());
        }
        w.events.clone()
    };
    let (acked, unknown): (HashMap<i64, Ack>, HashSet<(String, String)>) = {
        let l = lock_ledger(load);
        (
            l.acked.iter().map(|a| (a.revision, a.clone())).collect(),
            l.unknown.iter().chain(&l.in_flight).cloned().collect(),
        )
    };
    check_events(&events, &acked, &unknown)
}

/// The watch-history rule of [`check_watched`] on plain data.
pub fn check_events(
    events: &[Seen],
    acked: &HashMap<i64, Ack>,
    unknown: &HashSet<(String, String)>,
) -> Result<(), String> {
    for (k, e) in events.iter().enumerate() {
        let expected = 2 + k as i64;
        if e.revision != expected {
            let what = if e.revision < expected {
                "a duplicate or out of order"
            } else {
                "a gap"
            };
            return Err(format!(
                "the watcher saw revision {} where revision {expected} was due ({what}); events around it: {:?}",
                e.revision,
                &events[k.saturating_sub(2)..(k + 2).min(events.len())]
            ));
        }
        let value = e.value.clone().ok_or_else(|| {
            format!(
                "the watcher saw a delete of {} at revision {}, nobody deletes",
                e.key, e.revision
            )
        })?;
        match acked.get(&e.revision) {
            Some(a) if a.key == e.key && a.value == value => {}
            Some(a) => {
                return Err(format!(
                    "revision {}: the watcher saw {}={value}, the put acknowledged at that revision was {}={}",
                    e.revision, e.key, a.key, a.value
                ))
            }
            None if unknown.contains(&(e.key.clone(), value.clone())) => {}
            None => {
                return Err(format!(
                    "revision {}: the watcher saw {}={value}, which no put of unknown outcome wrote",
                    e.revision, e.key
                ))
            }
        }
    }
    Ok(())
}

/// Every acknowledged put in `acks` reads back at its revision (linearizable reads, spread over
/// the serving voters).
async fn read_acks(urls: &[String], acks: &[Ack]) -> Result<(), String> {
    if urls.is_empty() {
        return Err("no serving voter to read from".into());
    }
    let clients = urls
        .iter()
        .map(|u| channel(u, Some(REQUEST_TIMEOUT)).map(KvClient::new))
        .collect::<Result<Vec<_>, _>>()?;
    for (c, chunk) in acks.chunks(READS_IN_FLIGHT).enumerate() {
        let mut reads = tokio::task::JoinSet::new();
        for (k, ack) in chunk.iter().enumerate() {
            let mut client = clients[(c + k) % clients.len()].clone();
            let ack = ack.clone();
            reads.spawn(async move { read_ack(&mut client, &ack).await });
        }
        while let Some(r) = reads.join_next().await {
            r.map_err(|e| format!("a read task failed: {e}"))??;
        }
    }
    Ok(())
}

async fn read_ack(
    client: &mut KvClient<tonic::transport::Channel>,
    ack: &Ack,
) -> Result<(), String> {
    let mut last_error = String::new();
    for _ in 0..5 {
        let r = client
            .range(RangeRequest {
                key: ack.key.as_bytes().to_vec(),
                revision: ack.revision,
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                let found = r.kvs.first().map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.mod_revision,
                    )
                });
                return match found {
                    Some((value, rev)) if value == ack.value && rev == ack.revision => Ok(()),
                    other => Err(format!(
                        "lost write: {}={} acknowledged at revision {} reads {other:?} at that revision",
                        ack.key, ack.value, ack.revision
                    )),
                };
            }
            Err(e) => last_error = e.message().to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!(
        "cannot read {} at revision {}: {last_error}",
        ack.key, ack.revision
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(revision: i64, key: &str, value: &str) -> Seen {
        Seen {
            revision,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    fn ack(revision: i64, key: &str, value: &str) -> (i64, Ack) {
        (
            revision,
            Ack {
                key: key.into(),
                value: value.into(),
                revision,
            },
        )
    }

    #[test]
    fn a_consecutive_history_of_acknowledged_and_unknown_puts_passes() {
        let acked = HashMap::from([ack(2, "a", "1"), ack(4, "a", "3")]);
        let unknown = HashSet::from([("b".to_string(), "2".to_string())]);
        let events = [seen(2, "a", "1"), seen(3, "b", "2"), seen(4, "a", "3")];
        assert_eq!(check_events(&events, &acked, &unknown), Ok(()));
    }

    #[test]
    fn a_gap_a_duplicate_or_a_foreign_value_fails() {
        let acked = HashMap::from([ack(2, "a", "1"), ack(3, "a", "2"), ack(4, "a", "3")]);
        let none = HashSet::new();
        let gap = [seen(2, "a", "1"), seen(4, "a", "3")];
        assert!(check_events(&gap, &acked, &none)
            .unwrap_err()
            .contains("a gap"));
        let dup = [seen(2, "a", "1"), seen(3, "a", "2"), seen(3, "a", "2")];
        assert!(check_events(&dup, &acked, &none)
            .unwrap_err()
            .contains("duplicate"));
        let wrong = [seen(2, "a", "1"), seen(3, "a", "9")];
        assert!(check_events(&wrong, &acked, &none)
            .unwrap_err()
            .contains("acknowledged"));
        let unknown_acked = HashMap::from([ack(2, "a", "1")]);
        let foreign = [seen(2, "a", "1"), seen(3, "x", "y")];
        assert!(check_events(&foreign, &unknown_acked, &none)
            .unwrap_err()
            .contains("no put"));
    }
}
