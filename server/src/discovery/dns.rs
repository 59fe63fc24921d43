//! A minimal DNS stub resolver: SRV and A/AAAA questions over UDP (TCP when the answer is
//! truncated) to one name server, enough for `--discovery-srv`.
//!
//! The name server is the first `nameserver` of /etc/resolv.conf. `ETCD_RS_TEST_DNS_SERVER`
//! (`ip:port`) replaces it and also makes host names resolve through it instead of the system
//! resolver: it exists for tests only, which run their own DNS server on a loopback port.
//! Invariant: bytes from the network are parsed with bounds checks only; a malformed answer
//! is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Test-only override of the name server (see the module docs).
pub const TEST_DNS_SERVER_ENV: &str = "ETCD_RS_TEST_DNS_SERVER";

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
const TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: usize = 2;

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host name, with its trailing dot (as Go's net.SRV).
    pub target: String,
}

/// What a DNS question can end with, worded as Go's net.DNSError.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lookup {name} on {server}: {reason}")]
pub struct DnsError {
    pub name: String,
    pub server: String,
    pub reason: String,
}

/// The name server to ask.
pub fn name_server() -> SocketAddr {
    if let Some(addr) = std::env::var(TEST_DNS_SERVER_ENV).ok().and_then(|s| s.parse().ok()) {
        return addr;
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53))
}

/// `name` as a fully qualified name (one trailing dot).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The question message for `name` and `qtype`, with recursion desired.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in fqdn(name).trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("invalid domain name {name:?}"));
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(m)
}

/// A parsed answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Srv(Srv),
    Addr(IpAddr),
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.pos).ok_or("truncated message")?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("truncated message")?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }
    /// A possibly compressed name; pointers are followed a bounded number of times.
    fn name(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut pos = self.pos;
        let mut jumped = false;
        for _ in 0..128 {
            let len = *self.buf.get(pos).ok_or("truncated name")? as usize;
            if len & 0xC0 == 0xC0 {
                let lo = *self.buf.get(pos + 1).ok_or("truncated name")? as usize;
                if !jumped {
                    self.pos = pos + 2;
                }
                jumped = true;
                pos = ((len & 0x3F) << 8) | lo;
                continue;
            }
            if len == 0 {
                if !jumped {
                    self.pos = pos + 1;
                }
                if out.is_empty() {
                    out.push('.');
                }
                return Ok(out);
            }
            let label = self.buf.get(pos + 1..pos + 1 + len).ok_or("truncated name")?;
            out.push_str(&String::from_utf8_lossy(label));
            out.push('.');
            pos += 1 + len;
        }
        Err("name compression loop".into())
    }
}

/// A parsed response: its id, rcode, truncation bit and answers.
#[derive(Debug)]
pub struct Response {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    pub answers: Vec<Record>,
}

/// Parses a response message.
pub fn decode_response(buf: &[u8]) -> Result<Response, String> {
    let mut r = Reader { buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let (qd, an) = (r.u16()?, r.u16()?);
    r.u16()?;
    r.u16()?;
    for _ in 0..qd {
        r.name()?;
        r.u16()?;
        r.u16()?;
    }
    let mut answers = Vec::new();
    for _ in 0..an {
        r.name()?;
        let (rtype, class) = (r.u16()?, r.u16()?);
        r.u32()?;
        let len = r.u16()? as usize;
        let start = r.pos;
        let rec = match (rtype, class) {
            (TYPE_SRV, CLASS_IN) => {
                let (priority, weight, port) = (r.u16()?, r.u16()?, r.u16()?);
                Record::Srv(Srv { priority, weight, port, target: r.name()? })
            }
            (TYPE_A, CLASS_IN) if len == 4 => {
                let b = r.bytes(4)?;
                Record::Addr(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            }
            (TYPE_AAAA, CLASS_IN) if len == 16 => {
                let b: [u8; 16] = r.bytes(16)?.try_into().map_err(|_| "bad AAAA record")?;
                Record::Addr(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => Record::Other,
        };
        r.pos = start;
        r.bytes(len)?;
        answers.push(rec);
    }
    Ok(Response { id, rcode: (flags & 0x000F) as u8, truncated: flags & 0x0200 != 0, answers })
}

async fn exchange_udp(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse().unwrap_or(server) } else { "[::]:0".parse().unwrap_or(server) };
    let sock = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

async fn exchange_tcp(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = tokio::net::TcpStream::connect(server).await.map_err(|e| e.to_string())?;
    let mut msg = (query.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(query);
    s.write_all(&msg).await.map_err(|e| e.to_string())?;
    let len = s.read_u16().await.map_err(|e| e.to_string())? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(buf)
}

/// A fresh message id (not secret: the reply must also come from the server we asked).
fn query_id() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (nanos as u16) ^ NEXT.fetch_add(0x9E37, std::sync::atomic::Ordering::Relaxed)
}

/// Asks `server` one question; the answers of the question's type.
pub async fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<Vec<Record>, DnsError> {
    let fail = |reason: String| DnsError { name: fqdn(name), server: server.to_string(), reason };
    let id = query_id();
    let q = encode_query(id, name, qtype).map_err(fail)?;
    let mut last = String::from("i/o timeout");
    for _ in 0..ATTEMPTS {
        let resp = match tokio::time::timeout(TIMEOUT, exchange_udp(server, &q)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                last = e;
                continue;
            }
            Err(_) => {
                last = "i/o timeout".into();
                continue;
            }
        };
        let mut resp = decode_response(&resp).map_err(fail)?;
        if resp.id != id {
            last = "server misbehaving".into();
            continue;
        }
        if resp.truncated {
            let bytes = tokio::time::timeout(TIMEOUT, exchange_tcp(server, &q))
                .await
                .map_err(|_| fail("i/o timeout".into()))?
                .map_err(fail)?;
            resp = decode_response(&bytes).map_err(fail)?;
        }
        return match resp.rcode {
            0 | 3 => {
                let answers: Vec<Record> = resp.answers.into_iter().filter(|r| !matches!(r, Record::Other)).collect();
                if answers.is_empty() {
                    Err(fail("no such host".into()))
                } else {
                    Ok(answers)
                }
            }
            _ => Err(fail("server misbehaving".into())),
        };
    }
    Err(fail(last))
}

/// Go's net.LookupSRV(service, "tcp", domain): `_service._tcp.domain`, sorted by priority and
/// then by weight (heaviest first; Go shuffles by weight, a deterministic order is one of its
/// outcomes).
pub async fn lookup_srv(service: &str, domain: &str) -> Result<Vec<Srv>, DnsError> {
    let name = format!("_{service}._tcp.{}", fqdn(domain));
    let mut out: Vec<Srv> = query(name_server(), &name, TYPE_SRV)
        .await?
        .into_iter()
        .filter_map(|r| if let Record::Srv(s) = r { Some(s) } else { None })
        .collect();
    out.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    Ok(out)
}

/// Go's net.ResolveTCPAddr("tcp", host:port): an IP literal as it is; a name through the system
/// resolver (or the test DNS server), the first IPv4 address preferred.
pub async fn resolve_tcp_addr(host: &str, port: u16) -> Result<SocketAddr, DnsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let name = host.trim_end_matches('.');
    let addrs: Vec<IpAddr> = if std::env::var(TEST_DNS_SERVER_ENV).is_ok() {
        let server = name_server();
        let mut ips = Vec::new();
        for qtype in [TYPE_A, TYPE_AAAA] {
            if let Ok(rs) = query(server, name, qtype).await {
                ips.extend(rs.into_iter().filter_map(|r| if let Record::Addr(ip) = r { Some(ip) } else { None }));
            }
        }
        ips
    } else {
        tokio::net::lookup_host((name, port)).await.map(|it| it.map(|a| a.ip()).collect()).unwrap_or_default()
    };
    let pick = addrs.iter().find(|ip| ip.is_ipv4()).or_else(|| addrs.first()).copied();
    pick.map(|ip| SocketAddr::new(ip, port)).ok_or_else(|| DnsError {
        name: name.to_string(),
        server: name_server().to_string(),
        reason: "no such host".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `query` with the given answer records (already encoded rdata).
    fn response(query: &[u8], answers: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = answers.len() as u8;
        for (t, rdata) in answers {
            m.extend_from_slice(&[0xC0, 12]); // the question's name
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&60u32.to_be_bytes());
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    #[test]
    fn srv_and_address_answers_are_decoded_with_compressed_names() {
        let q = encode_query(7, "_etcd-server._tcp.example.com", TYPE_SRV).unwrap();
        // target "m1" + pointer to "example.com" inside the question (offset 12 + 1 + 12 + 1 + 4)
        let mut srv = vec![0, 10, 0, 5, 0x09, 0x4C, 2, b'm', b'1', 0xC0, 30];
        let resp = response(&q, &[(TYPE_SRV, std::mem::take(&mut srv)), (TYPE_A, vec![127, 0, 0, 9])]);
        let r = decode_response(&resp).unwrap();
        assert_eq!((r.id, r.rcode, r.truncated), (7, 0, false));
        assert_eq!(
            r.answers,
            vec![
                Record::Srv(Srv { priority: 10, weight: 5, port: 2380, target: "m1.example.com.".into() }),
                Record::Addr(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))),
            ]
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let q = encode_query(1, "a.example", TYPE_SRV).unwrap();
        let full = response(&q, &[(TYPE_SRV, vec![0, 1, 0, 1, 0, 80, 1, b'x', 0])]);
        for cut in 0..full.len() {
            let _ = decode_response(&full[..cut]);
        }
        // a pointer loop
        let mut looped = q.clone();
        looped[7] = 1;
        looped.extend_from_slice(&[0xC0, (q.len()) as u8, 0, 33, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(decode_response(&looped).is_err());
        assert!(encode_query(1, "bad..name", TYPE_A).is_err());
    }
}
