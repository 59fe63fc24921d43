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
//! | `@members N`            | a cluster of members `m0..mN-1` (default 1); before the first step |
//! | `@spare K`              | reserve ports for K more members `mN..` (for `member add`); before the first step |
//! | `@tls`                  | https client and peer URLs, certificates generated for the run, client certificates required on both ports ([`crate::tls`]); before the first step |
//! | `@client-tls cert\|ca\|none` | TLS credentials etcdctl gets from then on (after `@tls`; default `cert`: `--cacert --cert --key`; `ca`: `--cacert` only; `none`: nothing) |
//! | `ARGS`                  | run `etcdctl ARGS` (shell-quoted)                            |
//! | `@stdin 'TEXT' ARGS`    | run `etcdctl ARGS` with TEXT on stdin (`\n`, `\t`, `\\` escapes) |
//! | `@timeout SECS ARGS`    | run `etcdctl ARGS`, interrupt it after SECS                  |
//! | `@interactive SECS 'TEXT' ARGS` | run `etcdctl ARGS` with TEXT on stdin, kept open, interrupt it after SECS |
//! | `@unordered ARGS`       | run `etcdctl ARGS`; its output lines are compared as a set   |
//! | `@endpoints I,J\|all`   | etcdctl endpoints of later commands (default `all`: every running member) |
//! | `@restart [I]`          | SIGTERM member I (default: every running one), start it on the same data |
//! | `@crash [I]`            | SIGKILL member I (default: every running one), start it on the same data |
//! | `@stop I` / `@kill I`   | SIGTERM / SIGKILL member I and leave it down                 |
//! | `@start I`              | start member I again on its data dir (no wait: see `@wait-healthy`) |
//! | `@start-new I`          | start member I as a new member joining the running cluster (after `member add`) |
//! | `@wait-healthy`         | wait until every running member serves clients               |
//! | `@sleep SECS`           | pause                                                        |
//! | `@env K=V`              | set an environment variable for later etcdctl commands       |
//!
//! In etcdctl arguments, `{PEER_I}`, `{CLIENT_I}`, `{NAME_I}` and `{ID_I}` stand for member I's
//! peer URL, client URL, name and member ID (hex, as `member list` prints it, looked up when
//! the command runs). Member indexes are checked here against `@members` plus `@spare`, and any
//! other `{WORD_N}` is an error, so a misspelt placeholder cannot reach etcdctl.
//!
//! In etcdctl arguments and stdin, `{LEASEn}` stands for the ID the n-th `lease grant` of the run printed
//! (1-based), so a scenario can attach keys to, keep alive or revoke the leases it granted.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::tls::ClientTls;

/// A parsed scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// File stem, e.g. `kv-put-get`.
    pub name: String,
    /// Extra flags passed to every member, after the harness's own flags.
    pub server_flags: Vec<String>,
    /// Number of members started at the beginning (`@members`, default 1).
    pub members: usize,
    /// Members beyond `members` that only get ports, for `member add` + `@start-new` (`@spare`).
    pub spare: usize,
    /// https everywhere, with generated certificates (`@tls`).
    pub tls: bool,
    pub steps: Vec<Step>,
}

/// Which members a lifecycle step applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// Every member running when the step is reached.
    All,
    One(usize),
}

/// Where later etcdctl commands connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// Every member running when the command runs.
    AllRunning,
    /// These members, in this order.
    Some(Vec<usize>),
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
    /// Stop with SIGTERM and leave the member down.
    Stop(usize),
    /// Stop with SIGKILL and leave the member down.
    Kill(usize),
    /// Start a member that was started before, on its data dir, without waiting.
    Start(usize),
    /// Start a member for the first time, joining the running cluster
    /// (`--initial-cluster-state existing`); waits until it serves clients.
    StartNew(usize),
    /// Wait until every running member serves clients.
    WaitHealthy,
    SetEndpoints(Endpoints),
    /// The TLS credentials later etcdctl commands get (`@client-tls`).
    SetClientTls(ClientTls),
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
    /// Compare the output lines as a set (`@unordered`).
    pub unordered: bool,
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
        spare: 0,
        tls: false,
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
        // Members that exist at all (started ones and spares), for index checks.
        let total = scenario.members + scenario.spare;
        let before_steps = |directive: &str| {
            if scenario.steps.is_empty() {
                Ok(())
            } else {
                Err(err(format!("{directive} must come before the first step")))
            }
        };
        if !word.starts_with('@') {
            scenario.steps.push(Step::Etcdctl(
                command(line, line, total, false).map_err(err)?,
            ));
            continue;
        }
        let step = match word {
            "@server-flags" => {
                before_steps(word)?;
                scenario
                    .server_flags
                    .extend(split_shell_words(rest).map_err(err)?);
                continue;
            }
            "@members" | "@spare" => {
                before_steps(word)?;
                let n = rest
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n <= 9 && (n >= 1 || word == "@spare"))
                    .ok_or_else(|| err(format!("{word} needs a count (up to 9), got `{rest}`")))?;
                if word == "@members" {
                    scenario.members = n;
                } else {
                    scenario.spare = n;
                }
                continue;
            }
            "@tls" if rest.is_empty() => {
                before_steps(word)?;
                scenario.tls = true;
                continue;
            }
            "@client-tls" => {
                if !scenario.tls {
                    return Err(err("@client-tls needs @tls first".into()));
                }
                let which = ClientTls::parse(rest).ok_or_else(|| {
                    err(format!("@client-tls takes cert, ca or none, got `{rest}`"))
                })?;
                Step::SetClientTls(which)
            }
            "@stdin" => {
                let mut words = split_shell_words(rest).map_err(err)?;
                if words.len() < 2 {
                    return Err(err(
                        "@stdin needs the stdin text and etcdctl arguments".into()
                    ));
                }
                let stdin = unescape(&words.remove(0)).map_err(err)?;
                check_placeholders(&words, total).map_err(err)?;
                Step::Etcdctl(Command {
                    args: words,
                    stdin: Some(stdin.into_bytes()),
                    time_limit: None,
                    unordered: false,
                    display: format!("{rest}  (with stdin)"),
                })
            }
            "@timeout" => {
                let (secs, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let limit = parse_seconds(secs).map_err(err)?;
                let display = format!("{}  (interrupted after {secs}s)", args.trim());
                let mut c = command(args, &display, total, false).map_err(err)?;
                c.time_limit = Some(limit);
                Step::Etcdctl(c)
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
                    unordered: false,
                    display: format!("{}  (with open stdin, interrupted after {secs}s)", args.trim()),
                })
            }
            "@unordered" => {
                let display = format!("{rest}  (lines unordered)");
                Step::Etcdctl(command(rest, &display, total, true).map_err(err)?)
            }
            "@endpoints" => Step::SetEndpoints(parse_endpoints(rest, total).map_err(err)?),
            "@restart" => Step::Restart(parse_members(rest, total).map_err(err)?),
            "@crash" => Step::Crash(parse_members(rest, total).map_err(err)?),
            "@stop" => Step::Stop(parse_index(rest, total).map_err(err)?),
            "@kill" => Step::Kill(parse_index(rest, total).map_err(err)?),
            "@start" => Step::Start(parse_index(rest, total).map_err(err)?),
            "@start-new" => {
                let i = parse_index(rest, total).map_err(err)?;
                if i < scenario.members {
                    return Err(err(format!(
                        "@start-new {i}: m{i} is an initial member; @start-new is for spares \
                         (`@spare`) after `member add`"
                    )));
                }
                Step::StartNew(i)
            }
            "@wait-healthy" if rest.is_empty() => Step::WaitHealthy,
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
            other => {
                return Err(err(format!(
                    "unknown directive `{other}` (or bad arguments)"
                )))
            }
        };
        scenario.steps.push(step);
    }
    Ok(scenario)
}

/// An etcdctl command from its (shell-quoted) arguments, placeholders checked.
fn command(args: &str, display: &str, members: usize, unordered: bool) -> Result<Command, String> {
    let words = split_shell_words(args)?;
    if words.is_empty() {
        return Err("missing etcdctl arguments".into());
    }
    check_placeholders(&words, members)?;
    Ok(Command {
        args: words,
        stdin: None,
        time_limit: None,
        unordered,
        display: display.to_string(),
    })
}

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Peer(usize),
    Client(usize),
    Name(usize),
    Id(usize),
}

/// One piece of an argument: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(Placeholder),
}

/// Splits an argument into text and placeholders. `{WORD_N}` with an unknown WORD is an error;
/// braces in any other shape (JSON values, say) are text.
fn pieces(arg: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let candidate = rest[open + 1..].find('}').and_then(|close| {
            let inner = &rest[open + 1..open + 1 + close];
            let (word, index) = inner.split_once('_')?;
            let shaped = !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_uppercase())
                && !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit());
            shaped.then_some((word, index, open + 2 + close))
        });
        let Some((word, index, end)) = candidate else {
            out.push(Piece::Text(&rest[..open + 1]));
            rest = &rest[open + 1..];
            continue;
        };
        let i: usize = index
            .parse()
            .map_err(|_| format!("bad member index in `{}`", &rest[open..end]))?;
        let placeholder = match word {
            "PEER" => Placeholder::Peer(i),
            "CLIENT" => Placeholder::Client(i),
            "NAME" => Placeholder::Name(i),
            "ID" => Placeholder::Id(i),
            _ => {
                return Err(format!(
                    "unknown placeholder `{}` (known: PEER, CLIENT, NAME, ID)",
                    &rest[open..end]
                ))
            }
        };
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        out.push(Piece::Placeholder(placeholder));
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

impl Placeholder {
    pub fn member(self) -> usize {
        match self {
            Placeholder::Peer(i)
            | Placeholder::Client(i)
            | Placeholder::Name(i)
            | Placeholder::Id(i) => i,
        }
    }
}

/// Checks every placeholder of `args` names a member below `members`.
fn check_placeholders(args: &[String], members: usize) -> Result<(), String> {
    for arg in args {
        for piece in pieces(arg)? {
            if let Piece::Placeholder(p) = piece {
                if p.member() >= members {
                    return Err(format!(
                        "placeholder for member {} in `{arg}`, but the scenario has {members} \
                         (@members plus @spare)",
                        p.member()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether an argument holds a placeholder (the runner looks IDs up only when needed).
pub fn placeholders(arg: &str) -> Vec<Placeholder> {
    pieces(arg)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| match p {
            Piece::Placeholder(p) => Some(p),
            Piece::Text(_) => None,
        })
        .collect()
}

/// Replaces the placeholders of `arg` with `value(placeholder)`.
pub fn expand(
    arg: &str,
    mut value: impl FnMut(Placeholder) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    for piece in pieces(arg)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(p) => out.push_str(&value(p)?),
        }
    }
    Ok(out)
}

fn parse_index(text: &str, count: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(i) if i < count => Ok(i),
        _ => Err(format!(
            "expected a member index below {count}, got `{text}`"
        )),
    }
}

fn parse_endpoints(text: &str, count: usize) -> Result<Endpoints, String> {
    if text == "all" {
        return Ok(Endpoints::AllRunning);
    }
    let members = text
        .split(',')
        .map(|i| parse_index(i.trim(), count))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoints::Some(members))
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
    parse_index(text, count).map(Members::One)
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

    #[test]
    fn parser_reads_cluster_directives() {
        let text = "@members 3\n@spare 1\n@endpoints 0,2\nput a 1\n@endpoints all\n@stop 1\n\
                    @kill 2\n@start 1\n@start-new 3\n@wait-healthy\n@restart 3\n@crash\n\
                    @unordered member list -w table\n";
        let s = parse("t", text).unwrap();
        assert_eq!((s.members, s.spare), (3, 1));
        assert_eq!(s.steps[0], Step::SetEndpoints(Endpoints::Some(vec![0, 2])));
        assert_eq!(s.steps[2], Step::SetEndpoints(Endpoints::AllRunning));
        assert_eq!(
            s.steps[3..11],
            [
                Step::Stop(1),
                Step::Kill(2),
                Step::Start(1),
                Step::StartNew(3),
                Step::WaitHealthy,
                Step::Restart(Members::One(3)),
                Step::Crash(Members::All),
                s.steps[10].clone(),
            ]
        );
        match &s.steps[10] {
            Step::Etcdctl(c) => {
                assert!(c.unordered);
                assert_eq!(c.args, ["member", "list", "-w", "table"]);
                assert_eq!(c.display, "member list -w table  (lines unordered)");
            }
            other => panic!("unexpected {other:?}"),
        }
        match &s.steps[1] {
            Step::Etcdctl(c) => assert!(!c.unordered),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parser_checks_member_indexes_against_members_and_spares() {
        for bad in [
            "@members 2\n@stop 2",
            "@members 2\n@spare 1\n@endpoints 0,3",
            "@members 2\n@spare 1\n@start-new 1",
            "@members 2\nmember remove {ID_2}",
            "@members 2\n@timeout 1 watch {NAME_5}",
            "@members 0",
            "@members ten",
            "@endpoints",
            "@endpoints 0,",
            "@wait-healthy now",
            "put a 1\n@members 3",
            "put a 1\n@spare 1",
        ] {
            assert!(parse("t", bad).is_err(), "accepted `{bad}`");
        }
        assert!(parse("t", "@members 2\n@spare 1\n@start-new 2\n@stop 2").is_ok());
        assert!(parse("t", "@members 2\n@spare 1\nmember remove {ID_2}").is_ok());
    }

    #[test]
    fn tls_directives_switch_https_on_and_pick_etcdctls_credentials() {
        let s = parse("t", "@tls\n@members 3\nput a 1\n@client-tls ca\nget a\n@client-tls none\n@client-tls cert\n").unwrap();
        assert!(s.tls);
        assert_eq!(s.members, 3);
        assert_eq!(
            s.steps[1..],
            [
                Step::SetClientTls(ClientTls::Ca),
                s.steps[2].clone(),
                Step::SetClientTls(ClientTls::None),
                Step::SetClientTls(ClientTls::Cert),
            ]
        );
        assert!(!parse("t", "put a 1").unwrap().tls);
        for bad in [
            "@client-tls ca",
            "@tls\n@client-tls",
            "@tls\n@client-tls both",
            "@tls yes",
            "put a 1\n@tls",
        ] {
            assert!(parse("t", bad).is_err(), "accepted `{bad}`");
        }
    }

    #[test]
    fn unknown_placeholders_are_errors_but_other_braces_are_text() {
        let e = parse("t", "member remove {IDS_0}").unwrap_err();
        assert!(e.message.contains("unknown placeholder `{IDS_0}`"), "{e}");
        let s = parse("t", r#"put k '{"a_1":2}{x}{ID_}'"#).unwrap();
        match &s.steps[0] {
            Step::Etcdctl(c) => assert_eq!(placeholders(&c.args[2]), []),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn placeholders_expand_in_place_and_keep_the_rest() {
        let value = |p: Placeholder| {
            Ok(match p {
                Placeholder::Peer(i) => format!("http://127.0.0.1:{}", 2380 + i),
                Placeholder::Client(i) => format!("http://127.0.0.1:{}", 2379 + i),
                Placeholder::Name(i) => format!("m{i}"),
                Placeholder::Id(i) => format!("{:x}", 0xabc0 + i),
            })
        };
        assert_eq!(
            expand("--peer-urls={PEER_3},{PEER_10}", value).unwrap(),
            "--peer-urls=http://127.0.0.1:2383,http://127.0.0.1:2390"
        );
        assert_eq!(expand("{ID_1}", value).unwrap(), "abc1");
        assert_eq!(
            expand("x{NAME_0}y{CLIENT_2}", value).unwrap(),
            "xm0yhttp://127.0.0.1:2381"
        );
        assert_eq!(expand("{a}{ID_x}{", value).unwrap(), "{a}{ID_x}{");
        assert_eq!(
            placeholders("{ID_3}-{PEER_1}"),
            [Placeholder::Id(3), Placeholder::Peer(1)]
        );
        // A lookup failure (say, a member not in the list) is the command's error.
        let failing = |_| Err("m3 is not in the member list".to_string());
        assert!(expand("{ID_3}", failing).is_err());
        assert_eq!(expand("plain", failing).unwrap(), "plain");
    }
}
