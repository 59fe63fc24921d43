//! Lease traffic: grant, put with a lease, keep-alive, TimeToLive, revoke, reads of leased keys,
//! and leases left to expire, over a few keys shared by all clients.
//!
//! Invariant: lease ids are chosen by the client (`client id << 32 | n`), so every lease of a
//! run has a unique id the history names before the grant's answer arrives; TTLs are short
//! (`ttl`), so some leases expire during a run and the checker sees the server's own revokes.
//! The variants serve the regression scenarios: `revoked-lease-keys-after-revoke` reads every
//! key of a lease right after revoking it, `lease-outlives-leader-change` keeps long leases
//! alive through faults and reads their keys.

use super::requests::call;
use super::{ClientContext, Traffic};
use crate::history::{Request, Response};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::ops::RangeInclusive;

const PREFIX: &str = "lease/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Everything, leases of 2-5 s left to expire now and then.
    Random,
    /// Grant, attach keys, revoke, read every key at once.
    RevokeThenRead,
    /// Leases of 10 s kept alive every second through faults, their keys read.
    KeepAlive,
}

pub struct LeaseTraffic {
    pub name: &'static str,
    pub mix: Mix,
    pub keys: usize,
    pub ttl: RangeInclusive<i64>,
}

impl LeaseTraffic {
    pub fn new(name: &'static str, mix: Mix) -> LeaseTraffic {
        let ttl = match mix {
            Mix::KeepAlive => 10..=10,
            _ => 2..=5,
        };
        LeaseTraffic {
            name,
            mix,
            keys: 4,
            ttl,
        }
    }
}

impl Traffic for LeaseTraffic {
    fn name(&self) -> &'static str {
        self.name
    }

    fn key_prefix(&self) -> &'static str {
        PREFIX
    }

    fn run(&self, ctx: ClientContext) -> BoxFuture<'static, ()> {
        let client = LeaseClient {
            next_lease: 1,
            live: Vec::new(),
            keys: self.keys.max(1),
            ttl: self.ttl.clone(),
        };
        match self.mix {
            Mix::Random => client.random(ctx).boxed(),
            Mix::RevokeThenRead => client.revoke_then_read(ctx).boxed(),
            Mix::KeepAlive => client.keep_alive(ctx).boxed(),
        }
    }
}

/// One client's leases: those it granted and has not seen end.
struct LeaseClient {
    next_lease: i64,
    live: Vec<i64>,
    keys: usize,
    ttl: RangeInclusive<i64>,
}

impl LeaseClient {
    fn new_id(&mut self, ctx: &ClientContext) -> i64 {
        self.next_lease += 1;
        (i64::from(ctx.id) << 32) | self.next_lease
    }

    fn key(&self, ctx: &mut ClientContext) -> String {
        format!("{PREFIX}k{}", ctx.rng.usize(0..self.keys))
    }

    /// Grants a lease; keeps it when the answer says (or may say) it exists.
    async fn grant(&mut self, ctx: &mut ClientContext, ttl: i64) -> Option<i64> {
        let id = self.new_id(ctx);
        match call(ctx, Request::LeaseGrant { id, ttl }).await {
            Ok(Response::LeaseGrant { .. }) => {
                self.live.push(id);
                Some(id)
            }
            _ => None,
        }
    }

    /// Forgets a lease the server says is gone.
    fn learn(&mut self, id: i64, answer: &Result<Response, tonic::Status>) {
        let gone = match answer {
            Ok(Response::Error(_)) | Ok(Response::LeaseRevoke { .. }) => true,
            Ok(Response::LeaseTimeToLive { ttl, .. }) => *ttl < 0,
            _ => false,
        };
        if gone {
            self.live.retain(|l| *l != id);
        }
    }

    fn pick(&self, ctx: &mut ClientContext) -> Option<i64> {
        (!self.live.is_empty()).then(|| self.live[ctx.rng.usize(0..self.live.len())])
    }

    async fn put_with_lease(&mut self, ctx: &mut ClientContext, lease: i64, key: String) {
        let value = ctx.recorder.unique_value(ctx.id);
        let answer = call(ctx, Request::PutWithLease { key, value, lease }).await;
        self.learn(lease, &answer);
    }

    async fn random(mut self, mut ctx: ClientContext) {
        while ctx.next_turn().await {
            let roll = ctx.rng.u32(0..100);
            let lease = self.pick(&mut ctx);
            let key = self.key(&mut ctx);
            match (roll, lease) {
                (0..15, _) | (_, None) => {
                    let ttl = ctx.rng.i64(self.ttl.clone());
                    self.grant(&mut ctx, ttl).await;
                }
                (15..40, Some(id)) => self.put_with_lease(&mut ctx, id, key).await,
                (40..55, Some(id)) => {
                    let answer = call(&mut ctx, Request::LeaseKeepAlive { id }).await;
                    self.learn(id, &answer);
                }
                (55..62, Some(id)) => {
                    let answer = call(&mut ctx, Request::LeaseTimeToLive { id }).await;
                    self.learn(id, &answer);
                }
                (62..70, Some(id)) => {
                    let answer = call(&mut ctx, Request::LeaseRevoke { id }).await;
                    self.learn(id, &answer);
                }
                (70..90, _) => {
                    let _ = call(&mut ctx, Request::Get { key }).await;
                }
                (90..95, _) => {
                    let value = ctx.recorder.unique_value(ctx.id);
                    let _ = call(&mut ctx, Request::Put { key, value }).await;
                }
                _ => {
                    let _ = call(&mut ctx, Request::Delete { key }).await;
                }
            }
        }
    }

    async fn revoke_then_read(mut self, mut ctx: ClientContext) {
        while ctx.next_turn().await {
            let ttl = ctx.rng.i64(self.ttl.clone());
            let Some(id) = self.grant(&mut ctx, ttl).await else {
                continue;
            };
            let keys: Vec<String> = (0..2).map(|_| self.key(&mut ctx)).collect();
            for key in &keys {
                self.put_with_lease(&mut ctx, id, key.clone()).await;
            }
            let answer = call(&mut ctx, Request::LeaseRevoke { id }).await;
            self.learn(id, &answer);
            for key in keys {
                let _ = call(&mut ctx, Request::Get { key }).await;
            }
        }
    }

    async fn keep_alive(mut self, mut ctx: ClientContext) {
        let ttl = *self.ttl.start();
        while ctx.next_turn().await {
            if self.live.len() < 2 {
                if let Some(id) = self.grant(&mut ctx, ttl).await {
                    let key = self.key(&mut ctx);
                    self.put_with_lease(&mut ctx, id, key).await;
                }
                continue;
            }
            for id in self.live.clone() {
                let answer = call(&mut ctx, Request::LeaseKeepAlive { id }).await;
                self.learn(id, &answer);
                let answer = call(&mut ctx, Request::LeaseTimeToLive { id }).await;
                self.learn(id, &answer);
            }
            let key = self.key(&mut ctx);
            let _ = call(&mut ctx, Request::Get { key }).await;
            // Keep-alives about every second (the TTL is 10 s), whatever the pace.
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        }
    }
}
