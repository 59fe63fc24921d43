//! A line diff for failure messages: unified style, three lines of context.
//!
//! Invariant: `diff(a, b)` is empty exactly when `a == b` line for line.

/// One line of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

const CONTEXT: usize = 3;

/// Renders the differences from `old` to `new`; lines only in `old` start with `-`, lines only
/// in `new` with `+`. Distant hunks are separated by `@@ line N @@` markers.
pub fn diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let edits = edit_script(&a, &b);
    if edits.iter().all(|e| matches!(e, Edit::Same(_))) {
        return String::new();
    }
    let changed: Vec<bool> = edits.iter().map(|e| !matches!(e, Edit::Same(_))).collect();
    let near_change = |i: usize| {
        let lo = i.saturating_sub(CONTEXT);
        let hi = (i + CONTEXT + 1).min(edits.len());
        changed[lo..hi].iter().any(|&c| c)
    };
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    let mut old_line = 1;
    let mut printing = false;
    for (i, edit) in edits.iter().enumerate() {
        if near_change(i) {
            if !printing {
                out.push_str(&format!("@@ line {old_line} @@\n"));
                printing = true;
            }
            match edit {
                Edit::Same(l) => out.push_str(&format!(" {l}\n")),
                Edit::Removed(l) => out.push_str(&format!("-{l}\n")),
                Edit::Added(l) => out.push_str(&format!("+{l}\n")),
            }
        } else {
            printing = false;
        }
        if !matches!(edit, Edit::Added(_)) {
            old_line += 1;
        }
    }
    out
}

/// Longest-common-subsequence edit script; transcripts are small, so O(n·m) is fine.
fn edit_script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Edit<'a>> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j] = length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut edits = Vec::with_capacity(n.max(m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            edits.push(Edit::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            edits.push(Edit::Removed(a[i]));
            i += 1;
        } else {
            edits.push(Edit::Added(b[j]));
            j += 1;
        }
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(diff("a\nb\n", "a\nb\n", "x", "y"), "");
    }

    #[test]
    fn changed_line_shows_as_removed_then_added_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nFIVE\n6\n7\n8\n9\n";
        assert_eq!(
            diff(old, new, "etcd", "etcd-rs"),
            "--- etcd\n+++ etcd-rs\n@@ line 2 @@\n 2\n 3\n 4\n-5\n+FIVE\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn missing_trailing_lines_are_reported() {
        let d = diff("a\nb\n", "a\n", "etcd", "etcd-rs");
        assert!(d.contains("-b\n"), "{d}");
    }
}
