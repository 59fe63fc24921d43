//! Normalizing transcripts: masking what legitimately differs between two runs of a server.
//!
//! Invariant: only values that differ between two runs of the *same* server are masked
//! (timings, raft term/index, db sizes, version strings, leader, remaining TTLs, client log
//! timestamps and connection names), plus, unless exact IDs are asked for, member/cluster/lease
//! IDs, which are renamed in order of first appearance. Revisions, keys, values, counts, error
//! text and exit codes are never touched: they are what compatibility means. One exception:
//! the name of the TLS alert for a missing client certificate, which the Go release a server
//! was built with decides (see [`CERT_REQUIRED_ALERT`]).
//!
//! IDs are keyed by their numeric value, so the hex form (`member list`) and the decimal form
//! (`-w json`) of the same ID get the same name: a server whose table and JSON disagree is
//! caught even with IDs normalized.

use std::collections::HashMap;

/// What to normalize beyond the always-volatile values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep member, cluster and lease IDs as printed.
    pub exact_ids: bool,
}

/// JSON fields (`"key":value`, as etcdctl's `-w json` prints) whose values vary run to run.
const JSON_MASKS: &[(&str, Kind, &str)] = &[
    ("\"raft_term\":", Kind::Number, "<TERM>"),
    ("\"raftTerm\":", Kind::Number, "<TERM>"),
    ("\"raftIndex\":", Kind::Number, "<INDEX>"),
    ("\"raftAppliedIndex\":", Kind::Number, "<INDEX>"),
    ("\"dbSize\":", Kind::Number, "<SIZE>"),
    ("\"dbSizeInUse\":", Kind::Number, "<SIZE>"),
    ("\"leader\":", Kind::NonZeroNumber, "<LEADER>"),
    // Only the server version is a string; a key's `"version":3` is a number and is kept.
    ("\"version\":", Kind::String, "<VERSION>"),
    ("\"ttl\":", Kind::Number, "<TTL>"),
    ("\"took\":", Kind::String, "<DURATION>"),
    // etcdctl's own log lines on stderr.
    ("\"ts\":", Kind::String, "<TS>"),
    ("\"target\":", Kind::String, "<TARGET>"),
];

/// `-w fields` lines (`"Key" : value`) whose values vary run to run.
const FIELD_MASKS: &[(&str, Kind, &str)] = &[
    ("\"RaftTerm\" : ", Kind::Number, "<TERM>"),
    ("\"RaftIndex\" : ", Kind::Number, "<INDEX>"),
    ("\"RaftAppliedIndex\" : ", Kind::Number, "<INDEX>"),
    ("\"DBSize\" : ", Kind::Number, "<SIZE>"),
    ("\"DBSizeInUse\" : ", Kind::Number, "<SIZE>"),
    ("\"Leader\" : ", Kind::NonZeroNumber, "<LEADER>"),
    ("\"Version\" : ", Kind::String, "<VERSION>"),
];

/// Fields whose decimal value is a member, cluster or lease ID.
const ID_FIELDS: &[&str] = &[
    "\"cluster_id\":",
    "\"member_id\":",
    "\"ID\":",
    "\"id\":",
    "\"lease\":",
    "\"ClusterID\" : ",
    "\"MemberID\" : ",
    "\"ID\" : ",
    "\"Lease\" : ",
];

/// Table columns (`-w table`) whose cells vary run to run.
const TABLE_MASKS: &[(&str, &str)] = &[
    ("VERSION", "<VERSION>"),
    ("DB SIZE", "<SIZE>"),
    ("DB SIZE IN USE", "<SIZE>"),
    ("RAFT TERM", "<TERM>"),
    ("RAFT INDEX", "<INDEX>"),
    ("RAFT APPLIED INDEX", "<INDEX>"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    NonZeroNumber,
    String,
}

/// Header suffix of a command whose output lines are compared as a set (`@unordered`).
pub const UNORDERED_MARK: &str = "  (lines unordered)";

/// Normalizes a whole transcript. ID names are assigned per call, in order of appearance.
pub fn normalize(text: &str, options: Options) -> String {
    let masked: Vec<String> = text.lines().map(mask_line).collect();
    let mut lines = canonical_tables(&masked);
    let known = known_ids(&lines);
    order_unordered_blocks(&mut lines, &known);
    let mut out = String::with_capacity(text.len());
    let mut ids = IdNames::default();
    for line in lines {
        let line = if options.exact_ids {
            line
        } else {
            map_ids(&line, &known, |n| ids.name(n))
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Sorts the output lines of every `@unordered` command (between its `$ etcdctl` header and
/// its final outcome line), so that both sides list them in one order. The sort key has IDs
/// blanked, so the order does not depend on ID values (which differ between the sides for
/// members added at run time), and ID names are then given in the same order on both sides.
/// `ETCD_INITIAL_CLUSTER` (printed by `member add` in member ID order) is sorted likewise.
fn order_unordered_blocks(lines: &mut [String], known: &std::collections::HashSet<u64>) {
    let mut i = 0;
    while i < lines.len() {
        if !(lines[i].starts_with("$ etcdctl ") && lines[i].ends_with(UNORDERED_MARK)) {
            i += 1;
            continue;
        }
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| {
                ["$ etcdctl ", "== ", "!! "]
                    .iter()
                    .any(|p| lines[j].starts_with(p))
            })
            .unwrap_or(lines.len());
        // The last line of a command's record is how it ended; it stays last.
        let body_end = end.saturating_sub(1).max(start);
        let body = &mut lines[start..body_end];
        for line in body.iter_mut() {
            if let Some(list) = line
                .strip_prefix("ETCD_INITIAL_CLUSTER=\"")
                .and_then(|l| l.strip_suffix('"'))
            {
                let mut entries: Vec<&str> = list.split(',').collect();
                entries
                    .sort_by_cached_key(|e| (map_ids(e, known, |_| "<ID>".into()), e.to_string()));
                *line = format!("ETCD_INITIAL_CLUSTER=\"{}\"", entries.join(","));
            }
        }
        body.sort_by_cached_key(|l| (map_ids(l, known, |_| "<ID>".into()), l.clone()));
        i = end;
    }
}

fn mask_line(line: &str) -> String {
    let mut line = line.to_string();
    for &(prefix, kind, mask) in JSON_MASKS.iter().chain(FIELD_MASKS) {
        line = replace_values(&line, prefix, kind, |_| Some(mask.to_string()));
    }
    line = replace_after(
        &line,
        "took = ",
        |rest| token_len(rest, |c| !c.is_whitespace()),
        "<DURATION>",
    );
    line = replace_after(
        &line,
        "remaining(",
        |rest| token_len(rest, |c| c.is_ascii_digit()),
        "<TTL>",
    );
    // Who led before a transfer depends on the election, like the leader field of status.
    line = replace_after(
        &line,
        "Leadership transferred from ",
        |rest| token_len(rest, |c| c.is_ascii_alphanumeric()),
        "<LEADER>",
    );
    line = unpad_member_line(&line);
    line = mask_go_log_time(&line);
    line = same_missing_client_cert_alert(&line);
    mask_status_line(&line)
}

/// The TLS alert a server sends a TLS 1.3 client that offered no certificate where one is
/// required depends on the Go release the server was built with, not on etcd: Go before 1.21
/// (etcd 3.4.23, 3.5.1) sends bad_certificate, later Go (newer etcd builds) and rustls send
/// certificate_required (RFC 8446 4.4.2.4). etcdctl prints it in its retry log lines, so the
/// newer one is written as the older one. Every other alert is kept.
const CERT_REQUIRED_ALERT: &str = "remote error: tls: certificate required";

fn same_missing_client_cert_alert(line: &str) -> String {
    line.replace(CERT_REQUIRED_ALERT, "remote error: tls: bad certificate")
}

/// etcdctl prints membership changes as `Member %16x added to cluster %16x`: an ID shorter than
/// 16 hex digits (as an added member's, derived from the time, may be) is padded with spaces.
/// Runs of spaces in such lines become one, so the padding does not differ when the IDs do.
fn unpad_member_line(line: &str) -> String {
    if !line.starts_with("Member ") {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

/// Replaces the value after each occurrence of `prefix` when it is of `kind` and `f` returns a
/// replacement for it.
fn replace_values(
    line: &str,
    prefix: &str,
    kind: Kind,
    mut f: impl FnMut(&str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let value_start = at + prefix.len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        let len = match kind {
            Kind::Number | Kind::NonZeroNumber => {
                let sign = usize::from(rest.starts_with('-'));
                let digits = token_len(&rest[sign..], |c| c.is_ascii_digit());
                if digits == 0 {
                    0
                } else {
                    sign + digits
                }
            }
            Kind::String => json_string_len(rest),
        };
        let value = &rest[..len];
        let skip = len == 0 || (kind == Kind::NonZeroNumber && value == "0");
        match (skip, if skip { None } else { f(value) }) {
            (false, Some(replacement)) => out.push_str(&replacement),
            _ => out.push_str(value),
        }
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

/// Replaces the token after each `prefix` (its length given by `len`) with `mask`.
fn replace_after(line: &str, prefix: &str, len: impl Fn(&str) -> usize, mask: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let value_start = at + prefix.len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        let n = len(rest);
        if n > 0 {
            out.push_str(mask);
        }
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

fn token_len(s: &str, accept: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !accept(c))
        .map_or(s.len(), |(i, _)| i)
}

/// Length of the JSON string literal at the start of `s` (quotes included), or 0.
fn json_string_len(s: &str) -> usize {
    if !s.starts_with('"') {
        return 0;
    }
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return i + 1,
            _ => {}
        }
    }
    0
}

/// Masks the `YYYY/MM/DD HH:MM:SS` stamp of Go log lines (`WARNING: 2024/01/02 03:04:05 ...`).
fn mask_go_log_time(line: &str) -> String {
    const SHAPE: &[u8] = b"dddd/dd/dd dd:dd:dd";
    let bytes = line.as_bytes();
    let fits = |at: usize| {
        bytes.len() >= at + SHAPE.len()
            && SHAPE.iter().zip(&bytes[at..]).all(|(&s, &b)| {
                if s == b'd' {
                    b.is_ascii_digit()
                } else {
                    s == b
                }
            })
    };
    match (0..bytes.len()).find(|&at| line.is_char_boundary(at) && fits(at)) {
        Some(at) => format!("{}<TS>{}", &line[..at], &line[at + SHAPE.len()..]),
        None => line.to_string(),
    }
}

/// Masks the volatile columns of `endpoint status` in its simple format:
/// `URL, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, RAFT TERM, RAFT INDEX, APPLIED INDEX, ERRORS`.
fn mask_status_line(line: &str) -> String {
    let mut fields: Vec<&str> = line.split(", ").collect();
    let is_bool = |s: &str| s == "true" || s == "false";
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let shaped = fields.len() >= 10
        && fields[0].starts_with("http")
        && is_bool(fields[4])
        && is_bool(fields[5])
        && fields[6..9].iter().all(|f| is_number(f));
    if !shaped {
        return line.to_string();
    }
    fields[2] = "<VERSION>";
    fields[3] = "<SIZE>";
    fields[6] = "<TERM>";
    fields[7] = "<INDEX>";
    fields[8] = "<INDEX>";
    fields.join(", ")
}

/// Rewrites ASCII tables (`+---+` borders, `| a | b |` rows) as `| a | b |` rows with trimmed
/// cells and a `+` border, masking the cells of volatile columns named in the header row.
/// Column widths follow the cells, so nothing is lost by not comparing them.
fn canonical_tables(lines: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    let mut masked_columns: Vec<Option<&str>> = Vec::new();
    let mut in_table = false;
    let mut header_seen = false;
    for line in lines {
        let is_border = line.starts_with('+') && line.chars().all(|c| c == '+' || c == '-');
        let is_row = line.starts_with('|') && line.ends_with('|') && line.len() > 1;
        if !is_border && !is_row {
            in_table = false;
            out.push(line.clone());
            continue;
        }
        if !in_table {
            in_table = true;
            header_seen = false;
            masked_columns.clear();
        }
        if is_border {
            out.push("+".to_string());
            continue;
        }
        let cells: Vec<&str> = line[1..line.len() - 1].split('|').map(str::trim).collect();
        if !header_seen {
            header_seen = true;
            masked_columns = cells
                .iter()
                .map(|h| {
                    TABLE_MASKS
                        .iter()
                        .find(|(name, _)| name == h)
                        .map(|&(_, mask)| mask)
                })
                .collect();
            out.push(format!("| {} |", cells.join(" | ")));
            continue;
        }
        let cells: Vec<&str> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| masked_columns.get(i).copied().flatten().unwrap_or(cell))
            .collect();
        out.push(format!("| {} |", cells.join(" | ")));
    }
    out
}

/// Names IDs `<ID1>`, `<ID2>`, ... in order of first appearance, by numeric value.
#[derive(Default)]
struct IdNames {
    names: HashMap<u64, String>,
}

impl IdNames {
    fn name(&mut self, value: u64) -> String {
        let next = self.names.len() + 1;
        self.names
            .entry(value)
            .or_insert_with(|| format!("<ID{next}>"))
            .clone()
    }
}

/// Hex words of these lengths are IDs wherever they appear (how etcdctl prints member and lease
/// IDs; a random 64-bit ID has fewer than 14 hex digits once in 256 times).
const HEX_ID_LENGTHS: std::ops::RangeInclusive<usize> = 14..=16;
/// Shorter hex words are IDs only when the transcript shows elsewhere that their value is one.
const MIN_KNOWN_HEX_ID_LENGTH: usize = 8;

/// Every ID value the transcript shows for certain: decimal values of ID fields, 14 to 16 digit
/// hex words, and the hex words of `Member X ... cluster Y` lines (any length).
fn known_ids(lines: &[String]) -> std::collections::HashSet<u64> {
    let mut known = std::collections::HashSet::new();
    for line in lines {
        map_ids(line, &std::collections::HashSet::new(), |n| {
            known.insert(n);
            String::new()
        });
        if line.starts_with("Member ") {
            for prefix in ["Member ", " cluster "] {
                if let Some(at) = line.find(prefix) {
                    let rest = &line[at + prefix.len()..];
                    let word = &rest[..token_len(rest, |c| c.is_ascii_alphanumeric())];
                    if is_hex(word) {
                        if let Ok(n) = u64::from_str_radix(word, 16) {
                            known.insert(n);
                        }
                    }
                }
            }
        }
    }
    known.remove(&0);
    known
}

fn is_hex(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Replaces IDs with `f(value)`: decimal values after known field names, every 14 to 16 digit
/// lowercase hex word, and shorter hex words (8 digits or more) whose value is in `known`.
/// Zero is "no ID" and is kept.
fn map_ids(
    line: &str,
    known: &std::collections::HashSet<u64>,
    mut f: impl FnMut(u64) -> String,
) -> String {
    let mut line = line.to_string();
    for prefix in ID_FIELDS {
        line = replace_values(&line, prefix, Kind::NonZeroNumber, |v| {
            v.parse::<u64>().ok().map(&mut f)
        });
    }
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(line.len());
    let mut rest = line.as_str();
    while !rest.is_empty() {
        let start = rest.find(is_word).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let len = token_len(rest, is_word);
        let word = &rest[..len];
        let value = if is_hex(word) && len <= 16 {
            u64::from_str_radix(word, 16).ok()
        } else {
            None
        };
        match value {
            Some(n)
                if n != 0
                    && (HEX_ID_LENGTHS.contains(&len)
                        || (len >= MIN_KNOWN_HEX_ID_LENGTH && known.contains(&n))) =>
            {
                out.push_str(&f(n))
            }
            _ => out.push_str(word),
        }
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        normalize(text, Options::default())
    }

    #[test]
    fn json_header_keeps_revision_and_masks_term() {
        let got = norm(
            r#"{"header":{"cluster_id":18034125172831531908,"member_id":10051543190546718974,"revision":7,"raft_term":2},"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":4,"version":3,"value":"YmFy"}],"count":1}"#,
        );
        assert_eq!(
            got,
            "{\"header\":{\"cluster_id\":<ID1>,\"member_id\":<ID2>,\"revision\":7,\"raft_term\":<TERM>},\
             \"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":2,\"mod_revision\":4,\"version\":3,\"value\":\"YmFy\"}],\"count\":1}\n"
        );
    }

    #[test]
    fn endpoint_status_json_masks_every_volatile_field() {
        let got = norm(
            r#"[{"Endpoint":"http://127.0.0.1:23790","Status":{"header":{"cluster_id":1,"member_id":2,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":2,"raftIndex":4,"raftTerm":2,"raftAppliedIndex":4,"dbSizeInUse":16384}}]"#,
        );
        assert_eq!(
            got,
            "[{\"Endpoint\":\"http://127.0.0.1:23790\",\"Status\":{\"header\":{\"cluster_id\":<ID1>,\
             \"member_id\":<ID2>,\"revision\":1,\"raft_term\":<TERM>},\"version\":<VERSION>,\"dbSize\":<SIZE>,\
             \"leader\":<LEADER>,\"raftIndex\":<INDEX>,\"raftTerm\":<TERM>,\"raftAppliedIndex\":<INDEX>,\
             \"dbSizeInUse\":<SIZE>}}]\n"
        );
    }

    #[test]
    fn no_leader_is_not_masked() {
        assert_eq!(norm(r#"{"leader":0}"#), "{\"leader\":0}\n");
    }

    #[test]
    fn hex_and_decimal_forms_of_one_id_get_one_name() {
        let got = norm(
            "8b7e4146c508a0fe, started, m0, http://127.0.0.1:2380, http://127.0.0.1:2379, false\n\
             {\"members\":[{\"ID\":10051543190546718974,\"name\":\"m0\"}]}\n\
             lease 20fea1ff2429020a granted with TTL(100s)\n",
        );
        assert_eq!(
            got,
            "<ID1>, started, m0, http://127.0.0.1:2380, http://127.0.0.1:2379, false\n\
             {\"members\":[{\"ID\":<ID1>,\"name\":\"m0\"}]}\n\
             lease <ID2> granted with TTL(100s)\n"
        );
    }

    #[test]
    fn differing_ids_still_differ_after_renaming() {
        // Same shape, but the second transcript's JSON names another member than its table.
        let a = norm("8b7e4146c508a0fe\n{\"ID\":10051543190546718974}\n");
        let b = norm("8b7e4146c508a0fe\n{\"ID\":10051543190546718975}\n");
        assert_ne!(a, b);
    }

    #[test]
    fn exact_ids_keeps_ids() {
        let text = "{\"member_id\":10051543190546718974} 8b7e4146c508a0fe\n";
        assert_eq!(normalize(text, Options { exact_ids: true }), text);
    }

    #[test]
    fn zero_lease_and_short_hex_words_are_kept() {
        assert_eq!(
            norm("\"Lease\" : 0\ndeadbeef\n"),
            "\"Lease\" : 0\ndeadbeef\n"
        );
    }

    #[test]
    fn fields_output_masks_term_but_keeps_kv_version() {
        let got =
            norm("\"RaftTerm\" : 2\n\"Version\" : 1\n\"Version\" : \"3.4.23\"\n\"Lease\" : 7587\n");
        assert_eq!(
            got,
            "\"RaftTerm\" : <TERM>\n\"Version\" : 1\n\"Version\" : <VERSION>\n\"Lease\" : <ID1>\n"
        );
    }

    #[test]
    fn health_timings_are_masked() {
        assert_eq!(
            norm("127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.498063ms"),
            "127.0.0.1:2379 is healthy: successfully committed proposal: took = <DURATION>\n"
        );
        assert_eq!(
            norm(r#"[{"endpoint":"http://127.0.0.1:1","health":true,"took":"1.4µs"}]"#),
            "[{\"endpoint\":\"http://127.0.0.1:1\",\"health\":true,\"took\":<DURATION>}]\n"
        );
    }

    #[test]
    fn client_log_lines_lose_timestamps_and_connection_names() {
        let got = norm(
            r#"stderr| {"level":"warn","ts":"2026-11-21T17:25:25.482Z","target":"endpoint://client-c85/127.0.0.1:1","attempt":0,"error":"rpc error: code = OutOfRange desc = x"}"#,
        );
        assert_eq!(
            got,
            "stderr| {\"level\":\"warn\",\"ts\":<TS>,\"target\":<TARGET>,\"attempt\":0,\
             \"error\":\"rpc error: code = OutOfRange desc = x\"}\n"
        );
        assert_eq!(
            norm("stderr| WARNING: 2026/11/21 17:25:27 [core] grpc: x"),
            "stderr| WARNING: <TS> [core] grpc: x\n"
        );
    }

    #[test]
    fn endpoint_status_simple_line_is_masked_by_position() {
        let got =
            norm("http://127.0.0.1:23790, 8b7e4146c508a0fe, 3.4.23, 20 kB, true, false, 2, 4, 4, ");
        assert_eq!(
            got,
            "http://127.0.0.1:23790, <ID1>, <VERSION>, <SIZE>, true, false, <TERM>, <INDEX>, <INDEX>, \n"
        );
    }

    #[test]
    fn tables_are_canonical_and_volatile_columns_masked() {
        let a = "+------+---------+---------+-----------+\n\
                 | ID   | VERSION | DB SIZE | RAFT TERM |\n\
                 +------+---------+---------+-----------+\n\
                 | abc  |  3.4.23 |   20 kB |         2 |\n\
                 +------+---------+---------+-----------+\n";
        let b = "+-----+---------+----------+-----------+\n\
                 | ID  | VERSION | DB SIZE  | RAFT TERM |\n\
                 +-----+---------+----------+-----------+\n\
                 | abc | 0.1.0   |   123 kB |        17 |\n\
                 +-----+---------+----------+-----------+\n";
        assert_eq!(norm(a), norm(b));
        assert_eq!(
            norm(a),
            "+\n| ID | VERSION | DB SIZE | RAFT TERM |\n+\n| abc | <VERSION> | <SIZE> | <TERM> |\n+\n"
        );
        // A non-volatile column still compares.
        assert_ne!(norm(a), norm(&a.replace("abc ", "abd ")));
    }

    #[test]
    fn remaining_ttl_is_masked_but_granted_ttl_kept() {
        assert_eq!(
            norm("lease 1 granted with TTL(100s), remaining(98s)"),
            "lease 1 granted with TTL(100s), remaining(<TTL>s)\n"
        );
    }

    #[test]
    fn padded_member_ids_compare_equal_to_full_length_ones() {
        // An added member's ID with 13 hex digits is printed padded to 16 by etcdctl.
        let short = norm(
            "$ etcdctl member add m3\nMember    1e0f35b4a9c2d added to cluster 9c3b5cd1b6e9c2a1\n\
             ETCD_NAME=\"m3\"\n[exit 0]\n$ etcdctl member list\n1e0f35b4a9c2d, unstarted, , x, , true\n",
        );
        let full = norm(
            "$ etcdctl member add m3\nMember 7a1e0f35b4a9c2d0 added to cluster 9c3b5cd1b6e9c2a1\n\
             ETCD_NAME=\"m3\"\n[exit 0]\n$ etcdctl member list\n7a1e0f35b4a9c2d0, unstarted, , x, , true\n",
        );
        assert_eq!(short, full);
        assert!(
            short.contains("Member <ID1> added to cluster <ID2>\n"),
            "{short}"
        );
        assert!(short.contains("<ID1>, unstarted"), "{short}");
        // A short hex word that is not a known ID stays as it is.
        assert_eq!(norm("1e0f35b4a9c2d\n"), "1e0f35b4a9c2d\n");
    }

    #[test]
    fn missing_client_cert_alerts_of_old_and_new_go_compare_equal_but_others_do_not() {
        let line = |alert: &str| {
            format!(
                r#"stderr| {{"error":"connection error: desc = \"transport: authentication handshake failed: remote error: tls: {alert}\""}}"#
            )
        };
        assert_eq!(norm(&line("certificate required")), norm(&line("bad certificate")));
        assert_ne!(norm(&line("unknown certificate authority")), norm(&line("bad certificate")));
        assert_ne!(norm(&line("handshake failure")), norm(&line("bad certificate")));
    }

    #[test]
    fn leadership_transfer_masks_only_the_previous_leader() {
        assert_eq!(
            norm("Leadership transferred from 8e9e05c52164694d to 91bc3c398fb3c146"),
            "Leadership transferred from <LEADER> to <ID1>\n"
        );
    }

    #[test]
    fn unordered_output_compares_as_a_set_with_ids_named_alike() {
        // Member list order follows IDs; an added member's ID differs between the sides.
        let a = "$ etcdctl member list  (lines unordered)\n\
                 1111111111111111, started, m0, p0, c0, false\n\
                 f000000000000003, unstarted, , p3, , true\n\
                 [exit 0]\n$ etcdctl member remove x\nMember f000000000000003 removed\n[exit 0]\n";
        let b = "$ etcdctl member list  (lines unordered)\n\
                 0100000000000003, unstarted, , p3, , true\n\
                 1111111111111111, started, m0, p0, c0, false\n\
                 [exit 0]\n$ etcdctl member remove x\nMember 0100000000000003 removed\n[exit 0]\n";
        assert_eq!(norm(a), norm(b));
        // Only the marked command's lines are reordered, and its outcome line stays last.
        let plain_a = a.replace("  (lines unordered)", "");
        let plain_b = b.replace("  (lines unordered)", "");
        assert_ne!(norm(&plain_a), norm(&plain_b));
        assert!(norm(a).contains("[exit 0]\n$ etcdctl member remove"));
        // A different set of lines still differs.
        assert_ne!(
            norm(a),
            norm(&b.replace("unstarted, , p3", "started, m3, p3"))
        );
    }

    #[test]
    fn unordered_initial_cluster_list_is_sorted() {
        let a = "$ etcdctl member add m3  (lines unordered)\n\
                 ETCD_INITIAL_CLUSTER=\"m0=http://a,m3=http://d,m1=http://b\"\n[exit 0]\n";
        let b = "$ etcdctl member add m3  (lines unordered)\n\
                 ETCD_INITIAL_CLUSTER=\"m3=http://d,m0=http://a,m1=http://b\"\n[exit 0]\n";
        assert_eq!(norm(a), norm(b));
        assert_ne!(norm(a), norm(&b.replace("m1=http://b", "m1=http://c")));
    }
}
