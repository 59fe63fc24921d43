//! `--discovery-srv D` (`--discovery-srv-name N`): the initial cluster from the SRV records
//! `_etcd-server-ssl[-N]._tcp.D` (https peers) and `_etcd-server[-N]._tcp.D` (http peers), as
//! etcd's embed.Config.GetDNSClusterNames and client/pkg/srv.GetCluster.
//!
//! Each record's target is resolved; the record whose address equals the address of one of
//! this member's advertised peer URLs gets this member's name, the others the names "0", "1",
//! ... (per record set, as etcd). The URLs keep the record's host name (trailing dot dropped).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::dns;

/// etcd's srv.GetCluster for one record set: `name=scheme://target:port` entries.
async fn cluster_from_records(
    scheme: &str,
    service: &str,
    name: &str,
    domain: &str,
    advertise_peer_urls: &[url::Url],
) -> Result<Vec<String>, String> {
    let mut by_addr: HashMap<SocketAddr, &url::Url> = HashMap::new();
    for u in advertise_peer_urls {
        let host = u.host_str().unwrap_or_default();
        let port = u.port_or_known_default().unwrap_or_default();
        let addr = dns::resolve_tcp_addr(host, port).await.map_err(|e| e.to_string())?;
        by_addr.insert(addr, u);
    }
    let wrap = |e: String| format!("error querying DNS SRV records for _{service} {e}");
    let records = dns::lookup_srv(service, domain).await.map_err(|e| wrap(e.to_string()))?;
    let mut parts = Vec::new();
    let mut last_err = None;
    let mut temp_name = 0;
    for srv in records {
        let addr = match dns::resolve_tcp_addr(&srv.target, srv.port).await {
            Ok(a) => a,
            Err(e) => {
                last_err = Some(e.to_string());
                continue;
            }
        };
        let mine = by_addr.get(&addr);
        let n = match mine {
            Some(_) => name.to_string(),
            None => {
                temp_name += 1;
                (temp_name - 1).to_string()
            }
        };
        let short = srv.target.trim_end_matches('.');
        let host = if short.contains(':') { format!("[{short}]:{}", srv.port) } else { format!("{short}:{}", srv.port) };
        match mine {
            Some(u) if u.scheme() != scheme => {
                last_err = Some(format!(
                    "bootstrap at {scheme}://{host} from DNS for {service} has scheme mismatch with expected peer {}",
                    crate::config::url_string(u)
                ));
            }
            _ => parts.push(format!("{n}={scheme}://{host}")),
        }
    }
    if parts.is_empty() {
        if let Some(e) = last_err {
            return Err(wrap(e));
        }
    }
    Ok(parts)
}

/// etcd's GetDNSClusterNames: the https records' members, then the http records'. An error
/// when both lookups failed (or found nobody), joined as Go's errors.Join.
pub async fn dns_cluster(
    name: &str,
    domain: &str,
    service_name: &str,
    advertise_peer_urls: &[url::Url],
) -> Result<Vec<String>, String> {
    let suffix = if service_name.is_empty() { String::new() } else { format!("-{service_name}") };
    let https_service = format!("etcd-server-ssl{suffix}");
    let http_service = format!("etcd-server{suffix}");
    let https = cluster_from_records("https", &https_service, name, domain, advertise_peer_urls).await;
    tracing::info!(service_name = %https_service, discovery_srv = domain, result = ?https, "get cluster for etcd-server-ssl SRV");
    let http = cluster_from_records("http", &http_service, name, domain, advertise_peer_urls).await;
    tracing::info!(service_name = %http_service, discovery_srv = domain, result = ?http, "get cluster for etcd-server SRV");
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for r in [https, http] {
        match r {
            Ok(p) => found.extend(p),
            Err(e) => errors.push(e),
        }
    }
    if found.is_empty() {
        return Err(errors.join("\n"));
    }
    for e in &errors {
        tracing::warn!(error = %e, "failed to resolve during SRV discovery");
    }
    Ok(found)
}

/// The addresses `urls` resolve to, sorted (etcd's netutil.URLStringsEqual compares these).
async fn resolved(urls: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for u in urls {
        let parsed = url::Url::parse(u).map_err(|e| format!("{u}: {e}"))?;
        let port = parsed.port_or_known_default().unwrap_or_default();
        out.push(dns::resolve_tcp_addr(parsed.host_str().unwrap_or_default(), port).await.map_err(|e| e.to_string())?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// etcd's advertiseMatchesCluster for a cluster from DNS: this member's URLs there (SRV
/// targets, host names) must resolve to the addresses of its advertised peer URLs.
pub async fn check_advertised(name: &str, cluster_urls: &[String], advertise_peer_urls: &[String]) -> Result<(), String> {
    if resolved(cluster_urls).await? != resolved(advertise_peer_urls).await? {
        return Err(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={} ",
            cluster_urls.join(","),
            advertise_peer_urls.join(",")
        ));
    }
    Ok(())
}
