//! Reading `etcdctl member list -w json`, which the runner uses to learn member IDs (for
//! `{ID_I}`) and the current membership (for `@start-new`'s `--initial-cluster`).
//!
//! Invariant: a listing is parsed completely or rejected. A member whose ID or peer URLs cannot
//! be read is an error, never a member silently left out, since a joining member started with
//! a partial `--initial-cluster` would fail for reasons that have nothing to do with the server.
//!
//! etcdctl prints the listing with Go's JSON encoder, always in this shape (field order fixed,
//! empty fields omitted):
//! `{"header":{...},"members":[{"ID":N,"name":"m0","peerURLs":["http://.."],"clientURLs":[..]},..]}`.
//! That fixed shape is what is read here; no general JSON parser is needed.

/// One member as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: u64,
    /// Empty while the member has not started (after `member add`).
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Parses the output of `etcdctl member list -w json`.
pub fn parse_member_list(json: &str) -> Result<Vec<Listed>, String> {
    let start = json
        .find("\"members\":[")
        .ok_or_else(|| format!("no \"members\" in member list output: {json}"))?;
    let body = &json[start..];
    // Each member object starts with its ID field.
    let mut chunks = body.split("{\"ID\":");
    chunks.next();
    chunks
        .map(|chunk| {
            let digits = chunk
                .find(|c: char| !c.is_ascii_digit())
                .map_or(chunk, |end| &chunk[..end]);
            let id = digits
                .parse::<u64>()
                .map_err(|_| format!("bad member ID in member list output: {json}"))?;
            let name = string_field(chunk, "\"name\":").unwrap_or_default();
            let peer_urls = string_list(chunk, "\"peerURLs\":[")
                .ok_or_else(|| format!("member {id:x} has no peerURLs in: {json}"))?;
            Ok(Listed {
                id,
                name,
                peer_urls,
            })
        })
        .collect()
}

/// The string value after `key` (the names here never hold quotes or escapes).
fn string_field(text: &str, key: &str) -> Option<String> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// The strings of the JSON list starting right after `key` (which ends with `[`).
fn string_list(text: &str, key: &str) -> Option<Vec<String>> {
    let rest = &text[text.find(key)? + key.len()..];
    let list = &rest[..rest.find(']')?];
    Some(
        list.split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_started_and_unstarted_members() {
        let json = r#"{"header":{"cluster_id":1,"member_id":2,"raft_term":3},"members":[{"ID":3127474419829524242,"peerURLs":["http://127.0.0.1:4"],"isLearner":true},{"ID":10501334649042878790,"name":"m0","peerURLs":["http://127.0.0.1:1","http://127.0.0.1:5"],"clientURLs":["http://127.0.0.1:2"]}]}"#;
        let members = parse_member_list(json).unwrap();
        assert_eq!(
            members,
            vec![
                Listed {
                    id: 3127474419829524242,
                    name: String::new(),
                    peer_urls: vec!["http://127.0.0.1:4".into()],
                },
                Listed {
                    id: 10501334649042878790,
                    name: "m0".into(),
                    peer_urls: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:5".into()],
                },
            ]
        );
    }

    #[test]
    fn rejects_output_that_is_not_a_listing() {
        assert!(parse_member_list("Error: context deadline exceeded").is_err());
        assert!(parse_member_list(r#"{"members":[{"ID":x}]}"#).is_err());
        assert!(parse_member_list(r#"{"members":[{"ID":1,"name":"m0"}]}"#).is_err());
    }
}
