//! Scenario files: what etcdctl is asked to do, one line at a time.
//!
//! Invariant: parsing is total and strict. Every line of a scenario becomes exactly one
//! [`Step`] (or a comment/flag line), and anything the parser does not understand is an
//! error naming the file and line, never silently skipped, so a typo cannot turn a scenario
//! into one that tests less than it says.
//!
//! Line forms:
//!
//! | line                    | meaning                                                      |
//! |-------------------------|--------------------------------------------------------------|
//! | `# text`, blank         | ignored                                                      |
//! | `@server-flags ARGS`    | extra server flags; only before the first step               |
//! | `ARGS`                  | run `etcdctl ARGS` (shell-quoted)                            |
//! | `@stdin 'TEXT' ARGS`    | run `etcdctl ARGS` with TEXT on stdin (`\n`, `\t`, `\\` escapes) |
//! | `@timeout SECS ARGS`    | run `etcdctl ARGS`, interrupt it after SECS                  |
//! | `@interactive SECS 'TEXT' ARGS` | run `etcdctl ARGS` with TEXT on stdin, kept open, interrupt it after SECS |
//! | `@restart [I]`          | SIGTERM member I (default: all), start it on the same data   |
//! | `@crash [I]`            | SIGKILL member I (default: all), start it on the same data   |
//! | `@sleep SECS`           | pause                                                        |
//! | `@env K=V`              | set an environment variable for later etcdctl commands       |
//!
//! In etcdctl arguments and stdin, `{LEASEn}` stands for the ID the n-th `lease grant` of the run printed
//! (1-based), so a scenario can attach keys to, keep alive or revoke the leases it granted.

use std::fmt;
use std::path::Path;
use std::time::Duration;

/// A parsed scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// File stem, e.g. `kv-put-get`.
    pub name: String,
    /// Extra flags passed to every member, after the harness's own flags.
    pub server_flags: Vec<String>,
    /// Number of members. Always 1 for now; the runner is written against this field.
    pub members: usize,
    pub steps: Vec<Step>,
}

/// Which members a lifecycle step applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    All,
    One(usize),
}

/// One action of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run etcdctl with these arguments (endpoints are added by the runner).
    Etcdctl(Command),
    /// Stop with SIGTERM, then start again on the same data dir.
    Restart(Members),
    /// Stop with SIGKILL, then start again on the same data dir.
    Crash(Members),
    Sleep(Duration),
    SetEnv {
        key: String,
        value: String,
    },
}

/// An etcdctl invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub args: Vec<String>,
    /// Bytes fed to stdin; `None` means stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Interrupt after this long (an expected outcome, for commands like `watch`).
    pub time_limit: Option<Duration>,
    /// The scenario line without the directive, as shown in transcripts.
    pub display: String,
}

/// A scenario that cannot be parsed: which line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses scenario text. `name` is used only for reporting.
pub fn parse(name: &str, text: &str) -> Result<Scenario, ParseError> {
    let mut scenario = Scenario {
        name: name.to_string(),
        server_flags: Vec::new(),
        members: 1,
        steps: Vec::new(),
    };
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let err = |message: String| ParseError {
            line: line_no,
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (line, ""),
        };
        if !word.starts_with('@') {
            let args = split_shell_words(line).map_err(err)?;
            scenario.steps.push(Step::Etcdctl(Command {
                args,
                stdin: None,
                time_limit: None,
                display: line.to_string(),
            }));
            continue;
        }
        let step = match word {
            "@server-flags" => {
                if !scenario.steps.is_empty() {
                    return Err(err("@server-flags must come before the first step".into()));
                }
                scenario
                    .server_flags
                    .extend(split_shell_words(rest).map_err(err)?);
                continue;
            }
            "@stdin" => {
                let mut words = split_shell_words(rest).map_err(err)?;
                if words.len() < 2 {
                    return Err(err(
                        "@stdin needs the stdin text and etcdctl arguments".into()
                    ));
                }
                let stdin = unescape(&words.remove(0)).map_err(err)?;
                Step::Etcdctl(Command {
                    args: words,
                    stdin: Some(stdin.into_bytes()),
                    time_limit: None,
                    display: format!("{rest}  (with stdin)"),
                })
            }
            "@timeout" => {
                let (secs, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let limit = parse_seconds(secs).map_err(err)?;
                let words = split_shell_words(args).map_err(err)?;
                if words.is_empty() {
                    return Err(err("@timeout needs seconds and etcdctl arguments".into()));
                }
                Step::Etcdctl(Command {
                    args: words,
                    stdin: None,
                    time_limit: Some(limit),
                    display: format!("{}  (interrupted after {secs}s)", args.trim()),
                })
            }
            "@interactive" => {
                let (secs, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let limit = parse_seconds(secs).map_err(err)?;
                let mut words = split_shell_words(args).map_err(err)?;
                if words.len() < 2 {
                    return Err(err(
                        "@interactive needs seconds, the stdin text and etcdctl arguments".into(),
                    ));
                }
                let stdin = unescape(&words.remove(0)).map_err(err)?;
                Step::Etcdctl(Command {
                    args: words,
                    stdin: Some(stdin.into_bytes()),
                    time_limit: Some(limit),
                    display: format!("{}  (with open stdin, interrupted after {secs}s)", args.trim()),
                })
            }
            "@restart" => Step::Restart(parse_members(rest, scenario.members).map_err(err)?),
            "@crash" => Step::Crash(parse_members(rest, scenario.members).map_err(err)?),
            "@sleep" => Step::Sleep(parse_seconds(rest).map_err(err)?),
            "@env" => {
                let words = split_shell_words(rest).map_err(err)?;
                let pair = match words.as_slice() {
                    [one] => one.split_once('='),
                    _ => None,
                };
                match pair {
                    Some((key, value)) if !key.is_empty() => Step::SetEnv {
                        key: key.to_string(),
                        value: value.to_string(),
                    },
                    _ => return Err(err(format!("@env needs one KEY=VALUE, got `{rest}`"))),
                }
            }
            other => return Err(err(format!("unknown directive `{other}`"))),
        };
        scenario.steps.push(step);
    }
    Ok(scenario)
}

/// Reads and parses a scenario file; the scenario's name is the file stem.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse(&name, &text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("expected seconds (0 to 600), got `{text}`"))
}

fn parse_members(text: &str, count: usize) -> Result<Members, String> {
    if text.is_empty() {
        return Ok(Members::All);
    }
    match text.parse::<usize>() {
        Ok(i) if i < count => Ok(Members::One(i)),
        _ => Err(format!(
            "expected a member index below {count}, got `{text}`"
        )),
    }
}

/// Turns `\n`, `\t`, `\\` in stdin text into the characters they name.
fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => return Err(format!("unknown escape `\\{other}` in stdin text")),
            None => return Err("stdin text ends with a lone backslash".into()),
        }
    }
    Ok(out)
}

/// Splits a line into words as a POSIX shell would, without expansions: whitespace separates
/// words; `'...'` is literal; `"..."` is literal except `\"`, `\\`, `\$`, `` \` ``; outside
/// quotes a backslash makes the next character literal. `""` is an empty word.
pub fn split_shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    // True once the current word has started, so that `""` yields an empty word.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err(format!("unterminated single quote in `{line}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err(format!("unterminated double quote in `{line}`")),
                        },
                        Some(c) => current.push(c),
                        None => return Err(format!("unterminated double quote in `{line}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => current.push(c),
                    None => return Err(format!("trailing backslash in `{line}`")),
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split_shell_words(line).unwrap()
    }

    #[test]
    fn shell_words_split_on_any_whitespace() {
        assert_eq!(words("  get\tfoo   --prefix "), ["get", "foo", "--prefix"]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn shell_words_keep_quoted_spaces_and_empty_words() {
        assert_eq!(words(r#"put "a b" 'c  d'"#), ["put", "a b", "c  d"]);
        assert_eq!(words(r#"get "" --from-key"#), ["get", "", "--from-key"]);
        assert_eq!(words("get ''"), ["get", ""]);
    }

    #[test]
    fn shell_words_join_adjacent_quoted_parts() {
        assert_eq!(words(r#"a'b'"c"d"#), ["abcd"]);
        assert_eq!(words(r#"--x="1 2""#), ["--x=1 2"]);
    }

    #[test]
    fn shell_words_single_quotes_are_literal() {
        assert_eq!(words(r#"'a\nb "c"'"#), [r#"a\nb "c""#]);
    }

    #[test]
    fn shell_words_backslash_escapes() {
        assert_eq!(words(r"a\ b \'x"), ["a b", "'x"]);
        assert_eq!(words(r#""q\"uote\\ \n""#), [r#"q"uote\ \n"#]);
    }

    #[test]
    fn shell_words_reject_unterminated_quotes_and_trailing_backslash() {
        assert!(split_shell_words("put 'abc").is_err());
        assert!(split_shell_words(r#"put "abc"#).is_err());
        assert!(split_shell_words(r#"put "abc\"#).is_err());
        assert!(split_shell_words(r"put abc\").is_err());
    }

    #[test]
    fn parser_reads_every_line_form() {
        let text = "# comment\n@server-flags --quota-backend-bytes=100 --x\n\nput foo bar\n\
                    @stdin 'a\\nb' txn --interactive=false\n@timeout 1.5 watch foo\n\
                    @restart\n@crash 0\n@sleep 0.25\n@env ETCDCTL_DIAL_TIMEOUT=3s\n";
        let s = parse("t", text).unwrap();
        assert_eq!(s.server_flags, ["--quota-backend-bytes=100", "--x"]);
        assert_eq!(s.steps.len(), 7);
        match &s.steps[0] {
            Step::Etcdctl(c) => {
                assert_eq!(c.args, ["put", "foo", "bar"]);
                assert_eq!(c.stdin, None);
                assert_eq!(c.time_limit, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        match &s.steps[1] {
            Step::Etcdctl(c) => {
                assert_eq!(c.args, ["txn", "--interactive=false"]);
                assert_eq!(c.stdin.as_deref(), Some(&b"a\nb"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
        match &s.steps[2] {
            Step::Etcdctl(c) => {
                assert_eq!(c.args, ["watch", "foo"]);
                assert_eq!(c.time_limit, Some(Duration::from_millis(1500)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(s.steps[3], Step::Restart(Members::All));
        assert_eq!(s.steps[4], Step::Crash(Members::One(0)));
        assert_eq!(s.steps[5], Step::Sleep(Duration::from_millis(250)));
        assert_eq!(
            s.steps[6],
            Step::SetEnv {
                key: "ETCDCTL_DIAL_TIMEOUT".into(),
                value: "3s".into()
            }
        );
    }

    #[test]
    fn interactive_lines_keep_stdin_and_a_time_limit() {
        let s = parse("t", "@interactive 2 'watch a\\n' watch -i\n").unwrap();
        match &s.steps[0] {
            Step::Etcdctl(c) => {
                assert_eq!(c.args, ["watch", "-i"]);
                assert_eq!(c.stdin.as_deref(), Some(&b"watch a\n"[..]));
                assert_eq!(c.time_limit, Some(Duration::from_secs(2)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parser_rejects_late_server_flags_with_line_number() {
        let e = parse("t", "put a b\n@server-flags --x\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("before the first step"), "{e}");
    }

    #[test]
    fn parser_rejects_unknown_directives_and_bad_arguments() {
        for bad in [
            "@bogus x",
            "@sleep soon",
            "@sleep -1",
            "@timeout 2",
            "@restart 1",
            "@env NOEQUALS",
            "@env =v",
            "@stdin 'only-text'",
            "@interactive 2 'only-text'",
            "@interactive soon 'x' watch -i",
            "@stdin 'bad \\q escape' txn",
            "put 'unterminated",
        ] {
            assert!(parse("t", bad).is_err(), "accepted `{bad}`");
        }
    }
}
