//! Bootstrap discovery: how a new member learns its initial cluster when `--initial-cluster` is
//! not given — DNS SRV records (`--discovery-srv`, srv.rs) or etcd 3.6's v3 discovery through
//! another etcd cluster (`--discovery-endpoints` + `--discovery-token`, v3.rs), in plain text
//! or over TLS (`--discovery-cert/key/cacert`, see `tls/discovery_client.rs`).
//!
//! Invariant: discovery runs once, for a member without a WAL, before its server starts, and
//! only replaces the configuration's initial cluster (and, for v3 discovery, the cluster token:
//! etcd uses the discovery token as the token its member and cluster IDs are computed from).
//! A restarted member reads its membership from its own data and never asks again.

pub mod dns;
pub mod srv;
pub mod v3;

use std::time::Duration;

use crate::config::{check_local_member, parse_go_duration, parse_initial_cluster, ConfigError, Flags, ServerConfig};

/// Where the initial cluster comes from.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// `--discovery-srv` (and `--discovery-srv-name`).
    Srv { domain: String, service_name: String },
    /// `--discovery-endpoints` and friends.
    V3(v3::V3Config),
}

/// etcd's ErrConflictBootstrapFlags.
const CONFLICT: &str = "multiple discovery or bootstrap flags are set. \
    Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"";

fn duration_flag(flag: &str, v: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(v, None).map_err(|e| ConfigError(format!("--{flag}: {}", e.0)))
}

impl Discovery {
    /// The discovery the flags ask for, checked as etcd's embed.Config.Validate does.
    pub fn from_flags(f: &Flags) -> Result<Option<Discovery>, ConfigError> {
        let endpoints: Vec<String> = if f.discovery_endpoints.is_empty() {
            Vec::new()
        } else {
            f.discovery_endpoints.split(',').map(str::to_string).collect()
        };
        let bootstrap_ways =
            [!f.discovery.is_empty(), f.initial_cluster.is_some(), !f.discovery_srv.is_empty(), !endpoints.is_empty()];
        if bootstrap_ways.iter().filter(|set| **set).count() > 1 {
            return Err(ConfigError(CONFLICT.into()));
        }
        let v3_flags = !endpoints.is_empty()
            || !f.discovery_token.is_empty()
            || !f.discovery_cert.is_empty()
            || !f.discovery_key.is_empty()
            || !f.discovery_cacert.is_empty()
            || !f.discovery_user.is_empty()
            || !f.discovery_password.is_empty();
        if !f.discovery_proxy.is_empty() && v3_flags {
            return Err(ConfigError(
                "both v2 discovery settings (discovery, discovery-proxy) and v3 discovery settings (discovery-token, \
                 discovery-endpoints, discovery-cert, discovery-key, discovery-cacert, discovery-user, discovery-password) are set"
                    .into(),
            ));
        }
        if f.discovery_token.is_empty() != endpoints.is_empty() {
            return Err(ConfigError("both --discovery-token and --discovery-endpoints must be set".into()));
        }
        if endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(ConfigError("--discovery-endpoints must not contain empty endpoints".into()));
        }
        if !f.discovery_srv.is_empty() {
            return Ok(Some(Discovery::Srv { domain: f.discovery_srv.clone(), service_name: f.discovery_srv_name.clone() }));
        }
        if endpoints.is_empty() {
            return Ok(None);
        }
        let auth = if f.discovery_user.is_empty() {
            None
        } else if f.discovery_password.is_empty() {
            // clientv3: "user:password" in one flag, or the user alone (etcd would prompt)
            match f.discovery_user.split_once(':') {
                Some((u, p)) => Some((u.to_string(), p.to_string())),
                None => return Err(ConfigError("--discovery-user without a password: give --discovery-password (etcd-rs does not prompt)".into())),
            }
        } else {
            Some((f.discovery_user.clone(), f.discovery_password.clone()))
        };
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.trim().to_string()).collect();
        let tls_flags = crate::tls::DiscoveryTlsFlags {
            cert: f.discovery_cert.clone(),
            key: f.discovery_key.clone(),
            cacert: f.discovery_cacert.clone(),
            insecure_transport: f.discovery_insecure_transport,
            insecure_skip_verify: f.discovery_insecure_skip_tls_verify,
        };
        let tls = crate::tls::discovery_client_config(&tls_flags, &endpoints).map_err(|e| ConfigError(e.0))?;
        Ok(Some(Discovery::V3(v3::V3Config {
            endpoints,
            token: f.discovery_token.clone(),
            dial_timeout: duration_flag("discovery-dial-timeout", &f.discovery_dial_timeout)?,
            request_timeout: duration_flag("discovery-request-timeout", &f.discovery_request_timeout)?,
            keepalive_time: duration_flag("discovery-keepalive-time", &f.discovery_keepalive_time)?,
            keepalive_timeout: duration_flag("discovery-keepalive-timeout", &f.discovery_keepalive_timeout)?,
            auth,
            tls,
        })))
    }
}

/// Runs the configured discovery for a member that has no WAL yet and sets the configuration's
/// initial cluster (see the module docs). Nothing to do without discovery, or for v3 discovery
/// when joining an existing cluster (etcd discovers only when bootstrapping a new one).
pub async fn bootstrap(cfg: &mut ServerConfig) -> Result<(), String> {
    let Some(discovery) = cfg.discovery.clone() else { return Ok(()) };
    match discovery {
        Discovery::Srv { domain, service_name } => {
            let apurls: Vec<url::Url> = cfg.advertise_peer_urls.iter().filter_map(|u| url::Url::parse(u).ok()).collect();
            let found = srv::dns_cluster(&cfg.name, &domain, &service_name, &apurls).await?;
            for node in &found {
                tracing::info!(node = %node, "got bootstrap from DNS for etcd-server");
            }
            let cluster = parse_initial_cluster(&found.join(",")).map_err(|e| e.0)?;
            let Some(me) = cluster.iter().find(|m| m.name == cfg.name) else {
                return Err(format!("cannot find local etcd member {:?} in SRV records", cfg.name));
            };
            if cfg.initial_cluster_new {
                srv::check_advertised(&cfg.name, &me.peer_urls, &cfg.advertise_peer_urls).await?;
            }
            cfg.initial_cluster = cluster;
        }
        Discovery::V3(v3cfg) => {
            if !cfg.initial_cluster_new {
                return Ok(());
            }
            tracing::info!("Bootstrapping cluster using v3 discovery.");
            // the temporary one-member cluster: this member's ID with the discovery token
            let member_id = crate::ids::member_id(&cfg.advertise_peer_urls, &v3cfg.token, None);
            let contents = cfg.advertise_peer_urls.iter().map(|u| format!("{}={u}", cfg.name)).collect::<Vec<_>>().join(",");
            let joined = v3::join_cluster(&v3cfg, member_id, &contents)
                .await
                .map_err(|e| format!("failed to join discovery cluster ({e})"))?;
            tracing::info!(cluster = %joined, "discovery joined cluster successfully");
            let cluster = parse_initial_cluster(&joined).map_err(|e| e.0)?;
            let mut urls: Vec<&String> = cluster.iter().flat_map(|m| &m.peer_urls).collect();
            let n = urls.len();
            urls.sort();
            urls.dedup();
            if urls.len() != n {
                return Err(format!("discovery cluster {joined} has duplicate url"));
            }
            check_local_member(&cfg.name, &cluster, &cfg.advertise_peer_urls).map_err(|e| e.0)?;
            cfg.initial_cluster = cluster;
            cfg.initial_cluster_token = v3cfg.token.clone();
        }
    }
    Ok(())
}
