//! An HTML timeline of operations, drawn as porcupine draws histories: one section per key, one
//! row per client, one box per operation from its call to its return (to the right edge when
//! the outcome is unknown), labelled with the request and the answer.
//!
//! Invariant: the page is self-contained (inline CSS, no script) and every text from the history
//! is HTML-escaped, so any key or value renders as text.

use crate::history::{Operation, Outcome, Request};
use crate::linearizability::Violation;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Draws the operations at `selection` (indices into `ops`), outlining those in `highlight`.
pub fn timeline_html(
    ops: &[Operation],
    selection: &[usize],
    highlight: &[usize],
    title: &str,
) -> String {
    let chosen: Vec<usize> = selection
        .iter()
        .copied()
        .filter(|&i| i < ops.len())
        .collect();
    let start = chosen.iter().map(|&i| ops[i].call).min().unwrap_or(0);
    let end = chosen
        .iter()
        .map(|&i| ops[i].return_time().unwrap_or(ops[i].call).max(ops[i].call))
        .max()
        .unwrap_or(0);
    let span = (end.saturating_sub(start)).max(1) as f64;
    let percent = |t: u64| (t.saturating_sub(start)) as f64 * 100.0 / span;

    // Section per key ("range <prefix>*" for ranges), then row per client.
    let mut sections: BTreeMap<String, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
    for &i in &chosen {
        let section = match &ops[i].request {
            Request::Range { prefix, .. } => format!("range {prefix}*"),
            other => format!("key {}", other.key().unwrap_or_default()),
        };
        sections
            .entry(section)
            .or_default()
            .entry(ops[i].client)
            .or_default()
            .push(i);
    }

    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n<p>time {start} ns to {end} ns; hover a box for details</p>\n",
        t = escape(title)
    );
    for (section, rows) in &sections {
        let _ = writeln!(page, "<h2>{}</h2>", escape(section));
        for (client, indices) in rows {
            let _ = write!(page, "<div class=\"row\"><span class=\"client\">client {client}</span><div class=\"lane\">");
            for &i in indices {
                let op = &ops[i];
                let left = percent(op.call);
                let right = op.return_time().map_or(100.0, |r| percent(r.max(op.call)));
                let class = match op.outcome {
                    Outcome::Ok(_) => "ok",
                    Outcome::Failed => "failed",
                    Outcome::Unknown => "unknown",
                };
                let mark = if highlight.contains(&i) {
                    " highlight"
                } else {
                    ""
                };
                let label = match &op.outcome {
                    Outcome::Ok(response) => format!("{} → {response}", op.request),
                    Outcome::Failed => format!("{} → failed", op.request),
                    Outcome::Unknown => format!("{} → ?", op.request),
                };
                let _ = write!(
                    page,
                    "<div class=\"op {class}{mark}\" style=\"left:{left:.3}%;width:{width:.3}%\" title=\"#{i} {full}\">{label}</div>",
                    width = (right - left).max(0.4),
                    full = escape(&op.to_string()),
                    label = escape(&label)
                );
            }
            page.push_str("</div></div>\n");
        }
    }
    page.push_str("</body></html>\n");
    page
}

/// Draws a violation's window with the operation that closed it outlined.
pub fn violation_html(ops: &[Operation], violation: &Violation) -> String {
    let title = match &violation.key {
        Some(key) => format!("linearizability violation on key {key}"),
        None => "linearizability violation".to_string(),
    };
    timeline_html(ops, &violation.window, &[violation.closing], &title)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em}\
.row{display:flex;align-items:center;margin:4px 0}\
.client{width:7em;flex:none;font-size:12px}\
.lane{position:relative;flex:1;height:26px;background:#f6f6f6}\
.op{position:absolute;top:2px;height:20px;overflow:hidden;white-space:nowrap;font-size:11px;\
box-sizing:border-box;border:1px solid #557;padding:1px 3px}\
.ok{background:#cfe3ff}.failed{background:#eee;text-decoration:line-through}\
.unknown{background:#fff4c2;border-style:dashed}\
.highlight{border:3px solid #d00;z-index:1}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Response;

    fn op(client: u32, call: u64, ret: u64, key: &str, outcome: Outcome) -> Operation {
        Operation {
            client,
            call,
            ret,
            request: Request::Put {
                key: key.into(),
                value: "<v&>".into(),
            },
            outcome,
        }
    }

    #[test]
    fn timeline_has_a_section_per_key_and_a_row_per_client() {
        let ops = [
            op(1, 0, 10, "a", Outcome::Ok(Response::Put { revision: 1 })),
            op(2, 5, 20, "a", Outcome::Unknown),
            op(2, 30, 40, "b", Outcome::Failed),
        ];
        let html = timeline_html(&ops, &[0, 1, 2], &[1], "t");
        assert_eq!(html.matches("<h2>").count(), 2);
        assert_eq!(html.matches("class=\"row\"").count(), 3);
        assert!(html.contains("op unknown highlight"));
        assert!(
            html.contains("left:0.000%;width:25.000%"),
            "box of #0 spans 0..10 of 0..40"
        );
        assert!(
            html.contains("&lt;v&amp;&gt;") && !html.contains("<v&>"),
            "values are escaped"
        );
    }

    #[test]
    fn unknown_operation_extends_to_the_right_edge() {
        let ops = [
            op(1, 0, 10, "a", Outcome::Ok(Response::Put { revision: 1 })),
            op(2, 5, 0, "a", Outcome::Unknown),
        ];
        let html = timeline_html(&ops, &[0, 1], &[], "t");
        assert!(html.contains("left:50.000%;width:50.000%"), "{html}");
    }
}
