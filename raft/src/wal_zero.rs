//! Zero-filled space ahead of the WAL's write offset, kept by a background thread.
//!
//! Why: a record written past the end of a file changes its size, so the fdatasync after it
//! must write the inode too (ext4 does `ext4_write_inode` inside fdatasync). A record written
//! over bytes that already exist on disk changes no metadata, and fdatasync flushes only data.
//! fallocate() is not enough on ext4: its unwritten extents are converted on first write, which
//! dirties the inode again. So the space is really written with zeros and fsynced.
//!
//! Invariant: `size` is a length up to which the segment file is durable (written and fsynced
//! with its size); bytes between the WAL's logical end and `size` are zeros. The filler writes
//! only at or past `size`, and only while no record is being written past `size`: a write that
//! does not fit waits for a running fill to finish and then extends the file itself under the
//! lock, so zeros never land on a record. Correctness never depends on the fill: a record past
//! `size` is an ordinary append whose fdatasync also flushes the new size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

/// The smallest extension; also the zero-filled length a new segment is born with.
pub const MIN_CHUNK: u64 = 64 * 1024;
/// The largest extension (the chunk doubles with the file up to this).
pub const MAX_CHUNK: u64 = 16 * 1024 * 1024;
/// Zeros are written, and synced, in pieces of this size: an fdatasync of a record waits for
/// every dirty page of the file, so a chunk of zeros is never left dirty as a whole (that
/// would stall the record's fdatasync for the whole chunk's write-back). A stop request is
/// also seen between pieces.
const PIECE: usize = 1024 * 1024;

#[derive(Debug)]
struct State {
    /// The file is durable up to here (see the module docs).
    size: u64,
    /// The length the filler is asked to reach.
    want: u64,
    /// The file is never extended past this (the segment's cut size).
    cap: u64,
    /// A fill of `[size, want)` is running.
    busy: bool,
    /// A fill failed; no more are tried (writes just append).
    failed: bool,
}

#[derive(Debug)]
struct Shared {
    file: Arc<File>,
    path: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The filler of one segment file; dropping it stops and joins its thread.
#[derive(Debug)]
pub struct ZeroFiller {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The extension asked for when the file is `size` long: doubling, within the bounds.
fn chunk(size: u64) -> u64 {
    size.clamp(MIN_CHUNK, MAX_CHUNK)
}

impl ZeroFiller {
    /// Starts a filler for `file`, durable and zero past the WAL's end up to `size`, never
    /// growing past `cap`.
    pub fn start(file: Arc<File>, path: PathBuf, size: u64, cap: u64) -> io::Result<ZeroFiller> {
        let shared = Arc::new(Shared {
            file,
            path,
            state: Mutex::new(State {
                size,
                want: size,
                cap,
                busy: false,
                failed: false,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wal-zero-fill".into())
            .spawn(move || fill_loop(&worker))?;
        Ok(ZeroFiller {
            shared,
            thread: Some(thread),
        })
    }

    /// Writes `buf` at `offset` and, if `sync`, fdatasyncs; then asks for more zeros if the
    /// end of the write comes near the end of the filled space.
    pub fn write_at(&self, buf: &[u8], offset: u64, sync: bool) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let file = &self.shared.file;
        let mut st = self.shared.state.lock();
        if end <= st.size {
            drop(st);
            file.write_all_at(buf, offset)?;
            if sync {
                file.sync_data()?;
            }
            st = self.shared.state.lock();
        } else {
            // Past the filled space: never while a fill writes there.
            while st.busy {
                self.shared.changed.wait(&mut st);
            }
            file.write_all_at(buf, offset)?;
            if sync {
                file.sync_data()?;
            }
            st.size = st.size.max(end);
        }
        if !st.failed && st.size < st.cap && st.size - end < chunk(st.size) / 2 {
            let want = (st.size + chunk(st.size)).min(st.cap);
            if want > st.want {
                st.want = want;
                self.shared.changed.notify_all();
            }
        }
        Ok(())
    }

    /// Changes the size the file may be extended to (tests use small segments).
    #[cfg(test)]
    pub fn set_cap(&self, cap: u64) {
        self.shared.state.lock().cap = cap;
    }

    /// Waits until no fill is running or asked for (tests).
    #[cfg(test)]
    pub fn wait_idle(&self) -> u64 {
        let mut st = self.shared.state.lock();
        while st.busy || (st.want > st.size && !st.failed) {
            self.shared.changed.wait(&mut st);
        }
        st.size
    }
}

impl Drop for ZeroFiller {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _st = self.shared.state.lock();
            self.shared.changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fill_loop(shared: &Shared) {
    let zeros = vec![0u8; PIECE];
    loop {
        let (from, to) = {
            let mut st = shared.state.lock();
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                if !st.failed && st.want > st.size {
                    break;
                }
                shared.changed.wait(&mut st);
            }
            st.busy = true;
            (st.size, st.want)
        };
        let result = fill(shared, &zeros, from, to);
        let mut st = shared.state.lock();
        st.busy = false;
        match result {
            Ok(true) => st.size = st.size.max(to),
            Ok(false) => {} // stopped part way: the zeros past `size` are harmless
            Err(e) => {
                tracing::warn!(
                    file = %shared.path.display(),
                    error = %e,
                    "could not zero-fill WAL space ahead of the writes; records will be appended"
                );
                st.failed = true;
            }
        }
        shared.changed.notify_all();
    }
}

/// Writes zeros over `[from, to)`, syncing piece by piece, then fsyncs the size. `Ok(false)`
/// if asked to stop.
fn fill(shared: &Shared, zeros: &[u8], from: u64, to: u64) -> io::Result<bool> {
    let mut at = from;
    while at < to {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let n = ((to - at) as usize).min(zeros.len());
        shared.file.write_all_at(&zeros[..n], at)?;
        shared.file.sync_data()?;
        at += n as u64;
    }
    shared.file.sync_all()?;
    Ok(true)
}
