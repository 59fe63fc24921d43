//! Running a scenario against one server binary and recording what etcdctl printed.
//!
//! Invariant: a transcript depends only on what etcdctl printed and how it exited, never on
//! scheduling: stdout and stderr are recorded separately (not interleaved), and a command cut
//! off by `@timeout` is recorded as interrupted rather than with its racy exit status.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command as Process, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::listing::{parse_member_list, Listed};
use crate::member::{send_signal, Cluster, MemberPorts, SIGINT, SIGKILL, SIGTERM};
use crate::scenario::{
    expand, placeholders, Command, Endpoints, Members, Placeholder, Scenario, Step,
};
use crate::tls::{ClientTls, TlsFiles};

/// A command without `@timeout` that runs longer than this is killed and recorded as hung.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// The raw (not yet normalized) record of one scenario run, plus where its logs are.
pub struct Run {
    pub transcript: String,
    /// The cluster, stopped; kept so its logs can be read or copied before it is dropped.
    pub cluster: Cluster,
}

/// How one etcdctl invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled(i32),
    /// Interrupted by the harness at the scenario's `@timeout`, as the scenario intended.
    Interrupted,
    /// Killed by the harness after [`COMMAND_LIMIT`].
    Hung,
}

/// What one etcdctl invocation printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub outcome: Outcome,
}

/// Runs `scenario` against `server` on `ports` (initial members first, then spares), with
/// `tls` when the scenario asks for `@tls`, and returns the raw transcript. Failures of the harness itself (a member that does not start)
/// end the transcript with a `!!` line, so they show up in the comparison instead of aborting it.
pub fn run(
    scenario: &Scenario,
    server: &Path,
    etcdctl: &Path,
    ports: &[MemberPorts],
    tls: Option<&TlsFiles>,
) -> Result<Run, String> {
    if scenario.tls && tls.is_none() {
        return Err(format!("scenario {}: @tls without certificates", scenario.name));
    }
    let tls = tls.filter(|_| scenario.tls);
    let mut cluster = Cluster::new(server, ports, scenario.members, &scenario.server_flags, tls)
        .map_err(|e| format!("cannot create a work dir: {e}"))?;
    let mut out = String::new();
    if let Err(e) = execute(scenario, &mut cluster, etcdctl, tls, &mut out) {
        out.push_str(&format!("!! {e}\n"));
    }
    cluster.stop_all();
    Ok(Run {
        transcript: out,
        cluster,
    })
}

/// The state of a run between steps.
struct Runner<'a> {
    cluster: &'a mut Cluster,
    etcdctl: &'a Path,
    env: BTreeMap<String, String>,
    endpoints: Endpoints,
    /// Member IDs seen in listings, by member index. Kept after a member is removed, so that
    /// `{ID_I}` still names it (to show what removing it twice does, say).
    ids: BTreeMap<usize, u64>,
    /// Lease IDs `lease grant` printed so far, for `{LEASEn}`.
    leases: Vec<String>,
    /// `@tls` certificates, and which of them etcdctl gets (`@client-tls`).
    tls: Option<&'a TlsFiles>,
    client_tls: ClientTls,
}

fn execute(
    scenario: &Scenario,
    cluster: &mut Cluster,
    etcdctl: &Path,
    tls: Option<&TlsFiles>,
    out: &mut String,
) -> Result<(), String> {
    cluster.start_all(etcdctl)?;
    let mut runner = Runner {
        cluster,
        etcdctl,
        env: BTreeMap::from([("ETCDCTL_API".to_string(), "3".to_string())]),
        endpoints: Endpoints::AllRunning,
        ids: BTreeMap::new(),
        leases: Vec::new(),
        tls,
        client_tls: ClientTls::Cert,
    };
    for step in &scenario.steps {
        runner.step(step, out)?;
    }
    Ok(())
}

/// Lease IDs that `lease grant` printed ("lease 694d71ddacfda227 granted with TTL(100s)").
fn granted_leases(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("lease ")?.strip_suffix("s)")?.split_once(" granted with TTL("))
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Replaces `{LEASEn}` in the arguments with the n-th (1-based) granted lease ID; the
/// displayed line keeps the placeholder, so transcripts do not carry the IDs.
fn with_leases(command: &Command, leases: &[String]) -> Command {
    let subst = |text: &str| {
        let mut t = text.to_string();
        for (i, id) in leases.iter().enumerate() {
            t = t.replace(&format!("{{LEASE{}}}", i + 1), id);
        }
        t
    };
    let mut c = command.clone();
    for arg in &mut c.args {
        *arg = subst(arg);
    }
    if let Some(stdin) = &c.stdin {
        c.stdin = Some(subst(&String::from_utf8_lossy(stdin)).into_bytes());
    }
    c
}

impl Runner<'_> {
    fn step(&mut self, step: &Step, out: &mut String) -> Result<(), String> {
        match step {
            Step::Etcdctl(command) => {
                let endpoints = self.endpoints()?;
                let expanded = with_leases(&self.expand(command)?, &self.leases);
                let expanded = self.with_tls(expanded, self.client_tls);
                let output = run_etcdctl(self.etcdctl, &endpoints, &expanded, &self.env)?;
                self.leases.extend(granted_leases(&output.stdout));
                render(out, &command.display, &output);
            }
            Step::Restart(which) => self.cycle(*which, SIGTERM, out, "@restart")?,
            Step::Crash(which) => self.cycle(*which, SIGKILL, out, "@crash")?,
            Step::Stop(i) => {
                self.cluster.members[*i].stop(SIGTERM);
                self.note(out, "@stop", *i);
            }
            Step::Kill(i) => {
                self.cluster.members[*i].stop(SIGKILL);
                self.note(out, "@kill", *i);
            }
            Step::Start(i) => {
                let member = &mut self.cluster.members[*i];
                if !member.started_before() {
                    return Err(format!(
                        "@start {i}: {} was never started (a new member needs @start-new)",
                        member.name
                    ));
                }
                member.start().map_err(|e| e.to_string())?;
                self.note(out, "@start", *i);
            }
            Step::StartNew(i) => {
                self.start_new(*i)?;
                self.note(out, "@start-new", *i);
            }
            Step::WaitHealthy => {
                for i in self.cluster.running() {
                    self.cluster.members[i].wait_healthy(self.etcdctl)?;
                }
                out.push_str("== @wait-healthy\n");
            }
            Step::SetEndpoints(endpoints) => {
                self.endpoints = endpoints.clone();
                let names = match endpoints {
                    Endpoints::AllRunning => "all".to_string(),
                    Endpoints::Some(list) => self.names(list),
                };
                out.push_str(&format!("== @endpoints {names}\n"));
            }
            Step::SetClientTls(which) => {
                self.client_tls = *which;
                out.push_str(&format!("== @client-tls {}\n", which.name()));
            }
            Step::Sleep(d) => thread::sleep(*d),
            Step::SetEnv { key, value } => {
                self.env.insert(key.clone(), value.clone());
            }
        }
        Ok(())
    }

    /// `command` with etcdctl's TLS arguments (`which` of the `@tls` certificates) first.
    fn with_tls(&self, command: Command, which: ClientTls) -> Command {
        let Some(tls) = self.tls else { return command };
        let mut args = tls.etcdctl_args(which);
        args.extend(command.args);
        Command { args, ..command }
    }

    fn names(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| self.cluster.members[i].name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn note(&self, out: &mut String, label: &str, member: usize) {
        out.push_str(&format!("== {label} {}\n", self.names(&[member])));
    }

    /// The `--endpoints` value for the next command.
    fn endpoints(&mut self) -> Result<String, String> {
        let endpoints = match &self.endpoints {
            Endpoints::AllRunning => self.cluster.running_endpoints(),
            Endpoints::Some(list) => list
                .iter()
                .map(|&i| self.cluster.members[i].client_url())
                .collect::<Vec<_>>()
                .join(","),
        };
        if endpoints.is_empty() {
            return Err("no member is running to send the command to".into());
        }
        Ok(endpoints)
    }

    /// The command with its placeholders replaced; member IDs are looked up only if used.
    fn expand(&mut self, command: &Command) -> Result<Command, String> {
        let needs_ids = command
            .args
            .iter()
            .flat_map(|a| placeholders(a))
            .any(|p| matches!(p, Placeholder::Id(_)));
        if needs_ids {
            let listing = self.member_list()?;
            for (i, member) in self.cluster.members.iter().enumerate() {
                if let Some(listed) = listing
                    .iter()
                    .find(|l| l.peer_urls.contains(&member.peer_url()))
                {
                    self.ids.insert(i, listed.id);
                }
            }
        }
        let members = &self.cluster.members;
        let ids = &self.ids;
        let args = command
            .args
            .iter()
            .map(|arg| {
                expand(arg, |p| {
                    let member = &members[p.member()];
                    match p {
                        Placeholder::Peer(_) => Ok(member.peer_url()),
                        Placeholder::Client(_) => Ok(member.client_url()),
                        Placeholder::Name(_) => Ok(member.name.clone()),
                        Placeholder::Id(i) => {
                            ids.get(&i).map(|id| format!("{id:x}")).ok_or_else(|| {
                                format!(
                                    "{{ID_{i}}}: {} has not been in any member list",
                                    member.name
                                )
                            })
                        }
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Command {
            args,
            ..command.clone()
        })
    }

    /// The cluster's membership as the running members report it.
    fn member_list(&mut self) -> Result<Vec<Listed>, String> {
        let endpoints = self.cluster.running_endpoints();
        let command = Command {
            args: ["member", "list", "-w", "json"].map(String::from).to_vec(),
            stdin: None,
            time_limit: None,
            unordered: false,
            display: "member list -w json".into(),
        };
        let command = self.with_tls(command, ClientTls::Cert);
        let output = run_etcdctl(self.etcdctl, &endpoints, &command, &self.env)?;
        if output.outcome != Outcome::Exited(0) {
            return Err(format!(
                "cannot look up member IDs: etcdctl member list: {}",
                output.stderr.trim()
            ));
        }
        parse_member_list(&output.stdout)
    }

    /// Starts spare member `i` with `--initial-cluster-state existing` and an
    /// `--initial-cluster` naming the current membership (which must include `i`, added by
    /// `member add`), then waits until it serves clients.
    fn start_new(&mut self, i: usize) -> Result<(), String> {
        if self.cluster.members[i].started_before() {
            return Err(format!(
                "@start-new {i}: {} was started before (use @start)",
                self.cluster.members[i].name
            ));
        }
        let listing = self.member_list()?;
        let mut entries = Vec::new();
        for listed in &listing {
            for url in &listed.peer_urls {
                let member = self
                    .cluster
                    .members
                    .iter()
                    .find(|m| m.peer_url() == *url)
                    .ok_or_else(|| {
                        format!("@start-new {i}: unknown peer URL {url} in member list")
                    })?;
                entries.push(format!("{}={url}", member.name));
            }
        }
        let member = &mut self.cluster.members[i];
        if !listing
            .iter()
            .any(|l| l.peer_urls.contains(&member.peer_url()))
        {
            return Err(format!(
                "@start-new {i}: {} is not in the member list (run `member add` first)",
                member.name
            ));
        }
        member.prepare_join(entries.join(","));
        member.start().map_err(|e| e.to_string())?;
        member.wait_healthy(self.etcdctl)
    }

    /// Stops the selected members with `sig`, starts them again and waits until they are healthy.
    fn cycle(
        &mut self,
        which: Members,
        sig: i32,
        out: &mut String,
        label: &str,
    ) -> Result<(), String> {
        let selected: Vec<usize> = match which {
            Members::All => self.cluster.running(),
            Members::One(i) => vec![i],
        };
        if let Some(&i) = selected
            .iter()
            .find(|&&i| !self.cluster.members[i].started_before())
        {
            return Err(format!("{label} {i}: m{i} was never started"));
        }
        for &i in &selected {
            self.cluster.members[i].stop(sig);
        }
        for &i in &selected {
            self.cluster.members[i].start().map_err(|e| e.to_string())?;
        }
        for &i in &selected {
            self.cluster.members[i].wait_healthy(self.etcdctl)?;
        }
        out.push_str(&format!("== {label} {}\n", self.names(&selected)));
        Ok(())
    }
}

/// Runs one etcdctl command, in its own process group so that a time limit also stops
/// anything it spawned.
pub fn run_etcdctl(
    etcdctl: &Path,
    endpoints: &str,
    command: &Command,
    env: &BTreeMap<String, String>,
) -> Result<Output, String> {
    // etcdctl 3.5 warns about every unknown ETCDCTL_* variable, such as the harness's own.
    let mut child = Process::new(etcdctl)
        .env_remove("ETCDCTL_BIN")
        .envs(env)
        .arg(format!("--endpoints={endpoints}"))
        .args(&command.args)
        .stdin(if command.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", etcdctl.display()))?;
    let pid = child.id() as i32;

    // With a time limit, stdin stays open until the command ends (interactive commands exit
    // on end of input).
    let keep_open = command.time_limit.is_some();
    let stdin_writer = match (child.stdin.take(), command.stdin.clone()) {
        (Some(mut pipe), Some(bytes)) => Some(thread::spawn(move || {
            // etcdctl may exit before reading everything; a broken pipe is not our error.
            let _ = pipe.write_all(&bytes);
            keep_open.then_some(pipe)
        })),
        _ => None,
    };
    let stdout_reader = child.stdout.take().map(reader_thread);
    let stderr_reader = child.stderr.take().map(reader_thread);

    let limit = command.time_limit.unwrap_or(COMMAND_LIMIT);
    let deadline = Instant::now() + limit;
    let mut cut_off = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline && !cut_off => {
                cut_off = true;
                send_signal(-pid, SIGINT);
                // Give it a moment to exit on SIGINT, then make sure.
                let grace = Instant::now() + Duration::from_secs(2);
                while Instant::now() < grace {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                send_signal(-pid, SIGKILL);
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot wait for etcdctl: {e}")),
        }
    };
    // Anything the command spawned dies with it, so the pipes close and the readers finish.
    send_signal(-pid, SIGKILL);
    if let Some(t) = stdin_writer {
        drop(t.join());
    }
    let stdout = stdout_reader.map(join_reader).unwrap_or_default();
    let stderr = stderr_reader.map(join_reader).unwrap_or_default();
    let outcome = match (cut_off, command.time_limit.is_some()) {
        (true, true) => Outcome::Interrupted,
        (true, false) => Outcome::Hung,
        (false, _) => exit_outcome(status),
    };
    Ok(Output {
        stdout,
        stderr,
        outcome,
    })
}

fn exit_outcome(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(sig)) => Outcome::Signalled(sig),
        (None, None) => Outcome::Exited(-1),
    }
}

fn reader_thread<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(handle: thread::JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&handle.join().unwrap_or_default()).into_owned()
}

/// Appends one command to a transcript:
///
/// ```text
/// $ etcdctl get foo
/// foo
/// bar
/// stderr| Error: ...
/// [exit 0]
/// ```
pub fn render(out: &mut String, display: &str, output: &Output) {
    out.push_str("$ etcdctl ");
    out.push_str(display);
    out.push('\n');
    for line in output.stdout.lines() {
        out.push_str(line);
        out.push('\n');
    }
    if !output.stdout.is_empty() && !output.stdout.ends_with('\n') {
        out.push_str("(no newline at end of stdout)\n");
    }
    for line in output.stderr.lines() {
        out.push_str("stderr| ");
        out.push_str(line);
        out.push('\n');
    }
    match output.outcome {
        Outcome::Exited(code) => out.push_str(&format!("[exit {code}]\n")),
        Outcome::Signalled(sig) => out.push_str(&format!("[killed by signal {sig}]\n")),
        Outcome::Interrupted => out.push_str("[interrupted at its time limit]\n"),
        Outcome::Hung => out.push_str(&format!(
            "[hung: killed after {} s]\n",
            COMMAND_LIMIT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_keeps_streams_apart_and_marks_missing_newline() {
        let mut out = String::new();
        let output = Output {
            stdout: "a\nb".into(),
            stderr: "Error: x\n".into(),
            outcome: Outcome::Exited(1),
        };
        render(&mut out, "get a", &output);
        assert_eq!(
            out,
            "$ etcdctl get a\na\nb\n(no newline at end of stdout)\nstderr| Error: x\n[exit 1]\n"
        );
    }

    /// A stand-in for etcdctl: `$1` is `--endpoints=...`, `$2` picks a behaviour.
    fn fake_etcdctl(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("fake-etcdctl");
        std::fs::write(
            &path,
            "#!/bin/sh\ncase \"$2\" in\n cat) cat; echo err >&2; exit 3;;\n \
             sleep) sleep 30 & sleep 30;;\nesac\n",
        )
        .unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
        path
    }

    /// Runs the fake, retrying while another test thread's fork still holds the script open
    /// for writing (ETXTBSY), a race of writing-then-executing inside one multi-threaded process.
    fn run_fake(fake: &Path, command: &Command) -> Output {
        for _ in 0..50 {
            match run_etcdctl(fake, "x", command, &BTreeMap::new()) {
                Err(e) if e.contains("Text file busy") => thread::sleep(Duration::from_millis(20)),
                other => return other.unwrap(),
            }
        }
        panic!("fake etcdctl stayed busy");
    }

    fn command(args: &[&str], stdin: Option<&[u8]>, limit: Option<Duration>) -> Command {
        Command {
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.map(<[u8]>::to_vec),
            time_limit: limit,
            unordered: false,
            display: args.join(" "),
        }
    }

    #[test]
    fn run_etcdctl_feeds_stdin_and_records_streams_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_etcdctl(dir.path());
        let o = run_fake(&fake, &command(&["cat"], Some(b"hello\n"), None));
        assert_eq!(o.stdout, "hello\n");
        assert_eq!(o.stderr, "err\n");
        assert_eq!(o.outcome, Outcome::Exited(3));
    }

    #[test]
    fn run_etcdctl_interrupts_the_whole_process_group_at_the_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_etcdctl(dir.path());
        let started = Instant::now();
        let limit = Some(Duration::from_millis(300));
        let o = run_fake(&fake, &command(&["sleep"], None, limit));
        // The background `sleep 30` holds the pipes: returning early proves it was killed too.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(o.outcome, Outcome::Interrupted);
    }
}

#[cfg(test)]
mod lease_placeholder_tests {
    use super::*;

    #[test]
    fn granted_lease_ids_replace_their_placeholders_but_not_the_display() {
        let ids = granted_leases("lease 694d71ddacfda227 granted with TTL(100s)\nother\nlease 1a granted with TTL(2s)\n");
        assert_eq!(ids, ["694d71ddacfda227", "1a"]);
        let c = Command {
            args: vec!["put".into(), "k".into(), "--lease={LEASE2}".into(), "{LEASE1}{LEASE12}".into()],
            stdin: Some(b"put e 8 --lease={LEASE1}\n".to_vec()),
            time_limit: None,
            unordered: false,
            display: "put k --lease={LEASE2}".into(),
        };
        let r = with_leases(&c, &ids);
        assert_eq!(r.stdin.as_deref(), Some(&b"put e 8 --lease=694d71ddacfda227\n"[..]));
        assert_eq!(r.args, ["put", "k", "--lease=1a", "694d71ddacfda227{LEASE12}"]);
        assert_eq!(r.display, "put k --lease={LEASE2}");
    }
}
