//! The sequences the migration tests run, each step followed by the full check.
//!
//! - [`migrate`]: replace every member by one of another binary, one at a time, as an operator
//!   would on a live cluster: add a learner, start it, promote it; if the member to go is the
//!   leader, move the leadership to the new member; remove the old member.
//! - [`kill_and_restart_leader`]: kill -9 a leader of a given binary, let the others elect,
//!   start it again.
//! - [`snapshot_catch_up`]: SIGSTOP a follower while the leader writes and compacts its raft log
//!   past it, so that on SIGCONT it can only catch up from a snapshot the leader sends.

use super::checks::Checker;
use super::fleet::{Fleet, Kind, Role};
use super::load::Load;

/// etcd keeps this many raft entries after a snapshot for slow followers (fixed in etcd 3.4 and
/// 3.5.1, whose `--experimental-snapshot-catchup-entries` came later; etcd-rs's default).
pub const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5000;

/// The leader's in-flight MsgApps per follower (`--max-inflight-msgs`' default is 4096/8 in
/// etcd-rs and etcd's MaxInflightMsgs is 512).
const MAX_INFLIGHT_MSGS: usize = 512;
/// Concurrent writers of [`snapshot_catch_up`]'s burst.
const WRITERS: usize = 16;

/// Tells the clients which members serve now.
fn serving_changed(fleet: &Fleet, load: &Load) {
    load.endpoints.set(fleet.voter_urls());
}

/// Replaces every current voter by a member of `to`, one at a time, checking after each change.
pub async fn migrate(
    fleet: &mut Fleet,
    load: &Load,
    checker: &mut Checker,
    to: Kind,
) -> Result<(), String> {
    let mut old = fleet.voters();
    while !old.is_empty() {
        let new = fleet.add_learner(to).await?;
        let name = fleet.members[new].name.clone();
        checker
            .step(
                &format!("member add --learner {name}; start it"),
                fleet,
                load,
            )
            .await?;
        fleet.promote(new).await?;
        serving_changed(fleet, load);
        checker
            .step(&format!("member promote {name}"), fleet, load)
            .await?;
        let leader = fleet.wait_leader().await?;
        let victim = if old.contains(&leader) {
            leader
        } else {
            old[0]
        };
        old.retain(|&o| o != victim);
        let victim_name = fleet.members[victim].name.clone();
        if victim == leader {
            fleet.move_leader(new).await?;
            checker
                .step(&format!("move-leader {victim_name} -> {name}"), fleet, load)
                .await?;
        }
        // Clients leave the member before it goes, as a load balancer would be told to.
        fleet.members[victim].role = Role::Removed;
        serving_changed(fleet, load);
        let how = if fleet.remove(victim).await? {
            "it stopped by itself"
        } else {
            "it kept running and was killed"
        };
        checker
            .step(&format!("member remove {victim_name} ({how})"), fleet, load)
            .await?;
    }
    Ok(())
}

/// Makes a member of `kind` the leader, kill -9s it, checks the others, restarts it, checks all.
pub async fn kill_and_restart_leader(
    fleet: &mut Fleet,
    load: &Load,
    checker: &mut Checker,
    kind: Kind,
) -> Result<(), String> {
    let leader = lead_with(fleet, load, checker, kind, None).await?;
    let name = fleet.members[leader].name.clone();
    fleet.kill(leader, libc::SIGKILL).await;
    serving_changed(fleet, load);
    fleet.wait_leader().await?;
    checker
        .step(&format!("kill -9 the leader {name}"), fleet, load)
        .await?;
    fleet.restart(leader).await?;
    serving_changed(fleet, load);
    checker.step(&format!("restart {name}"), fleet, load).await
}

/// Moves the leadership to a voter of `kind` other than `except` (unless one leads already).
async fn lead_with(
    fleet: &mut Fleet,
    load: &Load,
    checker: &mut Checker,
    kind: Kind,
    except: Option<usize>,
) -> Result<usize, String> {
    let fits = |fleet: &Fleet, i: usize| fleet.members[i].kind == kind && Some(i) != except;
    let leader = fleet.wait_leader().await?;
    if fits(fleet, leader) {
        return Ok(leader);
    }
    let to = fleet
        .voters()
        .into_iter()
        .find(|&i| fits(fleet, i))
        .ok_or_else(|| format!("no voter runs {} to lead", kind.label()))?;
    fleet.move_leader(to).await?;
    let name = fleet.members[to].name.clone();
    checker
        .step(&format!("move-leader to {name}"), fleet, load)
        .await?;
    Ok(to)
}

/// Makes a member of `leader_kind` the leader, cuts off a follower of `follower_kind` (SIGSTOP)
/// while more than `--snapshot-count` + [`SNAPSHOT_CATCHUP_ENTRIES`] entries are committed,
/// resumes it and checks that it caught up through a snapshot the leader sent.
pub async fn snapshot_catch_up(
    fleet: &mut Fleet,
    load: &Load,
    checker: &mut Checker,
    leader_kind: Kind,
    follower_kind: Kind,
    snapshot_count: u64,
) -> Result<(), String> {
    let voters = fleet.voters();
    let follower = *voters
        .iter()
        .find(|&&i| fleet.members[i].kind == follower_kind)
        .ok_or_else(|| format!("no voter runs {}", follower_kind.label()))?;
    let leader = lead_with(fleet, load, checker, leader_kind, Some(follower)).await?;
    let (f_name, l_name) = (
        fleet.members[follower].name.clone(),
        fleet.members[leader].name.clone(),
    );
    let others: Vec<usize> = fleet
        .voters()
        .into_iter()
        .filter(|&i| i != follower)
        .collect();
    let sent_before = snapshots_sent(fleet, &others).await?;
    fleet.pause(follower);
    serving_changed(fleet, load);
    // A leader batching appends can keep up to max-inflight MsgApps (512, etcd's and
    // etcd-rs's) queued to the stopped member, each with up to one entry per writer: write
    // past that too, so only a snapshot can catch it up.
    let entries = (snapshot_count + SNAPSHOT_CATCHUP_ENTRIES) as usize + MAX_INFLIGHT_MSGS * WRITERS + 1500;
    let acked = load.burst(entries, WRITERS).await;
    checker
        .step(
            &format!("{acked} puts while {f_name} is SIGSTOPped"),
            fleet,
            load,
        )
        .await?;
    fleet.resume(follower);
    serving_changed(fleet, load);
    checker
        .step(&format!("SIGCONT {f_name}: it caught up"), fleet, load)
        .await?;
    let sent_after = snapshots_sent(fleet, &others).await?;
    let senders: Vec<usize> = (0..others.len())
        .filter(|&k| sent_after[k] > sent_before[k])
        .map(|k| others[k])
        .collect();
    let received = snapshot_count_metric(&fleet.metrics(follower).await?, "receive");
    if senders.is_empty() || received < 1 {
        return Err(format!(
            "{f_name} caught up without a snapshot: no other member counts a snapshot sent since              the cut, {f_name} counts {received} received (etcd_network_snapshot_*_success)"
        ));
    }
    // A leader change under load may hand the sending to another member: it must run the
    // same binary, or the case did not test the direction it is named after.
    if !senders
        .iter()
        .any(|&i| fleet.members[i].kind == leader_kind)
    {
        return Err(format!(
            "the snapshot to {f_name} came from {}, not from a member running {} as {l_name} does",
            fleet.members[senders[0]].name,
            leader_kind.label()
        ));
    }
    let names: Vec<&str> = senders
        .iter()
        .map(|&i| fleet.members[i].name.as_str())
        .collect();
    eprintln!("  snapshot(s) to {f_name} sent by {names:?}, {received} received");
    Ok(())
}

/// Each member's count of snapshots sent.
async fn snapshots_sent(fleet: &Fleet, members: &[usize]) -> Result<Vec<i64>, String> {
    let mut counts = Vec::new();
    for &i in members {
        counts.push(snapshot_count_metric(&fleet.metrics(i).await?, "send"));
    }
    Ok(counts)
}

/// The sum of `etcd_network_snapshot_<dir>_success` over all peers in a Prometheus exposition.
pub fn snapshot_count_metric(metrics: &str, dir: &str) -> i64 {
    let name = format!("etcd_network_snapshot_{dir}_success");
    metrics
        .lines()
        .filter(|l| l.starts_with(&name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as i64
}

#[cfg(test)]
mod tests {
    use super::snapshot_count_metric;

    #[test]
    fn snapshot_counters_are_summed_over_peers() {
        let text = "# HELP etcd_network_snapshot_send_success x\n\
                    etcd_network_snapshot_send_success{To=\"a\"} 2\n\
                    etcd_network_snapshot_send_success{To=\"b\"} 1\n\
                    etcd_network_snapshot_send_successes 9\n\
                    etcd_network_snapshot_receive_success{From=\"c\"} 4\n";
        assert_eq!(snapshot_count_metric(text, "send"), 3);
        assert_eq!(snapshot_count_metric(text, "receive"), 4);
        assert_eq!(snapshot_count_metric("", "send"), 0);
    }
}
