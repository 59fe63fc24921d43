//! Where log lines go: `--log-outputs` (stderr, stdout, files, several at once as etcd's zap
//! tees them) and, with `--enable-log-rotation`, lumberjack's rotation of the one file target
//! (`--log-rotation-config-json`).
//!
//! Invariant: every formatted event reaches every output in one `write_all`, so a line is never
//! split between two files by a rotation: the rotation happens before a write that would cross
//! `maxsize`, never inside it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// etcd's `DefaultLogRotationConfig`.
pub const DEFAULT_LOG_ROTATION_CONFIG: &str =
    r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#;

/// etcd's ErrLogRotationInvalidLogOutput (its text names the flag by an older name).
pub const ERR_ROTATION_INVALID_OUTPUT: &str = "--log-outputs requires a single file path when --log-rotate-config-json is defined";

/// lumberjack's settings, as etcd reads them from `--log-rotation-config-json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Rotation {
    /// Megabytes a file may reach before it is rotated (0: lumberjack's default, 100).
    pub maxsize: u64,
    /// Days a rotated file is kept (0: no limit).
    pub maxage: u64,
    /// Rotated files kept (0: no limit).
    pub maxbackups: usize,
    /// Backup names in local time instead of UTC.
    pub localtime: bool,
    pub compress: bool,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { maxsize: 100, maxage: 0, maxbackups: 0, localtime: false, compress: false }
    }
}

impl Rotation {
    /// etcd's setupLogRotation checks: exactly one file target (stderr/stdout may sit beside
    /// it), then the JSON.
    pub fn parse(outputs: &[String], json: &str) -> Result<Rotation, String> {
        let files = outputs.iter().filter(|o| !is_stream(o)).count();
        if (outputs.len() == 1 && files == 0) || files > 1 {
            return Err(ERR_ROTATION_INVALID_OUTPUT.to_string());
        }
        let r: Rotation = serde_json::from_str(json).map_err(|e| match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("improperly formatted log rotation config: {e}")
            }
            _ => format!("invalid log rotation config: {e}"),
        })?;
        if r.compress {
            return Err("--log-rotation-config-json: \"compress\": true is not supported by etcd-rs yet (rotated files stay uncompressed)".into());
        }
        if r.localtime {
            return Err("--log-rotation-config-json: \"localtime\": true is not supported by etcd-rs yet (backup names are in UTC)".into());
        }
        Ok(r)
    }

    fn max_bytes(&self) -> u64 {
        (if self.maxsize == 0 { 100 } else { self.maxsize }) * 1024 * 1024
    }
}

/// "default", "stderr", "stdout" and "journal" are streams; anything else a file path.
fn is_stream(o: &str) -> bool {
    matches!(o, "default" | "stderr" | "stdout" | "journal")
}

enum Output {
    Stderr,
    Stdout,
    File(File),
    Rotating(RotatingFile),
}

/// Every `--log-outputs` target; a write goes to each.
pub struct Outputs(Vec<Output>);

impl Outputs {
    /// Opens the targets (files appended to, created when missing). `journal` writes to stderr,
    /// which systemd sends to the journal.
    pub fn open(outputs: &[String], rotation: Option<&Rotation>) -> Result<Outputs, String> {
        let mut out = Vec::new();
        for o in outputs {
            out.push(match o.as_str() {
                "default" | "stderr" | "journal" => Output::Stderr,
                "stdout" => Output::Stdout,
                path => match rotation {
                    Some(r) => Output::Rotating(
                        RotatingFile::open(PathBuf::from(path), r.clone())
                            .map_err(|e| format!("--log-outputs: cannot open {path}: {e}"))?,
                    ),
                    None => Output::File(open_append(Path::new(path)).map_err(|e| format!("--log-outputs: cannot open {path}: {e}"))?),
                },
            });
        }
        Ok(Outputs(out))
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for Outputs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // as zap's tee: one failing target does not keep the line from the others
        let mut first_err = None;
        for o in &mut self.0 {
            let r = match o {
                Output::Stderr => io::stderr().write_all(buf),
                Output::Stdout => io::stdout().write_all(buf),
                Output::File(f) => f.write_all(buf),
                Output::Rotating(f) => f.write_all(buf),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// lumberjack's Logger: a file that is renamed to `<name>-<UTC time>.<ext>` when the next write
/// would take it past `maxsize`, a new one opened in its place, and old backups removed past
/// `maxbackups` / `maxage`.
struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl RotatingFile {
    fn open(path: PathBuf, rotation: Rotation) -> io::Result<RotatingFile> {
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path, file, size, rotation })
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let max = self.rotation.max_bytes();
        if buf.len() as u64 > max {
            return Err(io::Error::other(format!("write length {} exceeds maximum file size {max}", buf.len())));
        }
        if self.size + buf.len() as u64 > max {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let backup = self.backup_name(SystemTime::now());
        std::fs::rename(&self.path, &backup)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.remove_old_backups();
        Ok(())
    }

    /// `dir/name-2006-01-02T15-04-05.000.ext`, lumberjack's backup name (in UTC).
    fn backup_name(&self, at: SystemTime) -> PathBuf {
        let (stem, ext) = self.stem_and_ext();
        let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let ts = super::format_utc(d.as_secs() as i64, d.subsec_millis(), 3).replace(':', "-");
        let ts = ts.trim_end_matches('Z');
        self.path.with_file_name(format!("{stem}-{ts}{ext}"))
    }

    fn stem_and_ext(&self) -> (String, String) {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match self.path.extension() {
            Some(e) => {
                let ext = format!(".{}", e.to_string_lossy());
                (name[..name.len() - ext.len()].to_string(), ext)
            }
            None => (name, String::new()),
        }
    }

    /// Backups of this file, newest first (their names sort by time).
    fn backups(&self) -> Vec<PathBuf> {
        let (stem, ext) = self.stem_and_ext();
        let prefix = format!("{stem}-");
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        n.starts_with(&prefix) && n.ends_with(&ext) && n.len() == prefix.len() + "2006-01-02T15-04-05.000".len() + ext.len()
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found.reverse();
        found
    }

    fn remove_old_backups(&self) {
        let backups = self.backups();
        let max_age = (self.rotation.maxage > 0).then(|| Duration::from_secs(self.rotation.maxage * 86_400));
        for (i, b) in backups.iter().enumerate() {
            let too_many = self.rotation.maxbackups > 0 && i >= self.rotation.maxbackups;
            let too_old = max_age.is_some_and(|age| {
                b.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|e| e > age)
            });
            if too_many || too_old {
                let _ = std::fs::remove_file(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rotation_needs_exactly_one_file_target_and_valid_json() {
        let ok = Rotation::parse(&outs(&["/tmp/x.log"]), DEFAULT_LOG_ROTATION_CONFIG).unwrap();
        assert_eq!(ok, Rotation::default());
        Rotation::parse(&outs(&["stderr", "/tmp/x.log"]), DEFAULT_LOG_ROTATION_CONFIG).unwrap();
        for bad in [&["stderr"][..], &["/a.log", "/b.log"][..]] {
            assert_eq!(Rotation::parse(&outs(bad), DEFAULT_LOG_ROTATION_CONFIG).unwrap_err(), ERR_ROTATION_INVALID_OUTPUT);
        }
        let e = Rotation::parse(&outs(&["/a.log"]), "{maxsize").unwrap_err();
        assert!(e.starts_with("improperly formatted log rotation config: "), "{e}");
        let e = Rotation::parse(&outs(&["/a.log"]), r#"{"maxsize": "big"}"#).unwrap_err();
        assert!(e.starts_with("invalid log rotation config: "), "{e}");
        assert_eq!(Rotation::parse(&outs(&["/a.log"]), r#"{"maxbackups": 2}"#).unwrap().maxsize, 100);
    }

    #[test]
    fn a_full_file_is_renamed_and_old_backups_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.log");
        let mut f = RotatingFile::open(path.clone(), Rotation { maxsize: 1, maxbackups: 2, ..Rotation::default() }).unwrap();
        let line = vec![b'x'; 400 * 1024];
        for _ in 0..12 {
            f.write_all(&line).unwrap();
            // backup names have millisecond resolution
            std::thread::sleep(Duration::from_millis(2));
        }
        // 2 lines a file (a third would cross 1 MiB): 6 files written, 2 backups kept
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * 400 * 1024);
        let backups = f.backups();
        assert_eq!(backups.len(), 2, "{backups:?}");
        for b in &backups {
            let name = b.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("etcd-") && name.ends_with(".log"), "{name}");
            assert_eq!(std::fs::metadata(b).unwrap().len(), 2 * 400 * 1024);
        }
    }
}
