//! Traffic: what the clients of a run do, while faults are injected.
//!
//! Invariant: a traffic records every request it makes through the shared [`Recorder`] (one
//! clock, the contract in the crate docs), one request at a time per client, at most one request
//! per `pace` per client, and returns soon after `stop` is signalled. Its choices come only from
//! the client's seeded `rng`, so a seed reproduces the same request mix (not the same
//! interleaving, which depends on the cluster).

pub mod kube;
pub mod kv;
pub mod lease;
pub mod requests;

use crate::client::EtcdClient;
use crate::history::ClientId;
use crate::recorder::Recorder;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// Signalled once when the traffic must stop.
#[derive(Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

/// The sending side of [`Stop`].
pub struct StopHandle(tokio::sync::watch::Sender<bool>);

pub fn stop_signal() -> (StopHandle, Stop) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (StopHandle(tx), Stop(rx))
}

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Stop {
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once stop is signalled.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// What one client of a traffic owns.
pub struct ClientContext {
    pub id: ClientId,
    /// Connected to one member; moves to another when that one fails (`EtcdClient::observe`).
    pub client: EtcdClient,
    pub recorder: Arc<Recorder>,
    pub rng: fastrand::Rng,
    pub stop: Stop,
    /// The least time between two requests of this client (the rate bound).
    pub pace: Duration,
}

impl ClientContext {
    /// Waits for this client's next turn; false once the traffic must stop.
    pub async fn next_turn(&mut self) -> bool {
        if self.stop.is_stopped() {
            return false;
        }
        let pace = self.pace;
        tokio::select! {
            _ = tokio::time::sleep(pace) => !self.stop.is_stopped(),
            _ = self.stop.stopped() => false,
        }
    }
}

/// A kind of traffic (kv, lease, kube): the loop one client runs until stopped.
pub trait Traffic: Send + Sync {
    /// The name used on the command line (`--traffic NAME`).
    fn name(&self) -> &'static str;

    /// Every key this traffic writes starts with this prefix (the final read covers all keys).
    fn key_prefix(&self) -> &'static str;

    /// Runs one client until `ctx.stop`; every request goes through `ctx.recorder`.
    fn run(&self, ctx: ClientContext) -> BoxFuture<'static, ()>;
}

/// The traffic named `name`, if there is one.
pub fn by_name(name: &str) -> Option<Box<dyn Traffic>> {
    match name {
        "kv" => Some(Box::new(kv::KvTraffic::default())),
        "lease" => Some(Box::new(lease::LeaseTraffic::new(
            "lease",
            lease::Mix::Random,
        ))),
        "lease-revoke" => Some(Box::new(lease::LeaseTraffic::new(
            "lease-revoke",
            lease::Mix::RevokeThenRead,
        ))),
        "lease-keepalive" => Some(Box::new(lease::LeaseTraffic::new(
            "lease-keepalive",
            lease::Mix::KeepAlive,
        ))),
        "kube" => Some(Box::new(kube::KubeTraffic {
            name: "kube",
            mix: kube::Mix::Random,
            pods: 6,
        })),
        "kube-compact-watch" => Some(Box::new(kube::KubeTraffic {
            name: "kube-compact-watch",
            mix: kube::Mix::CompactWatch,
            pods: 1,
        })),
        _ => None,
    }
}
