//! The raft thread's runtime: one thread ("raft-loop") runs a current-thread tokio runtime on
//! which the raft loop is a task beside every peer stream, pipeline and peer-listener
//! connection.
//!
//! Why one thread: the raft loop hands each Ready's messages to the stream writers and gets
//! every peer message back from the stream readers. With the loop on a thread of its own and the
//! peer tasks on the multi-thread client runtime, every such hand-off was a thread wake-up (and
//! the woken worker, finding work while searching, woke a second one): ~50 context switches per
//! put summed over a 3-member cluster at one client. Here those hand-offs stay on one thread.
//!
//! What this asks of the peer tasks: nothing on this runtime may block waiting for the raft loop
//! (it would wait for itself); they await it instead, as every peer handler does. Long work goes
//! to `spawn_blocking` (`block_in_place` panics on a current-thread runtime). The loop's own
//! WAL fsync does block the thread (`RaftLoop::persist`): the loop waits for it in any case,
//! and the messages it must not hold back (a leader's appends) are written before it starts.
//! On a blocking thread instead, each fsync cost two more thread wake-ups (3 members, 256
//! clients: ~0.2 context switches per put summed) and a follower's fsync one more hand-off
//! on every put's path.
//!
//! Measured (3 members on 2 vCPUs, 1 client, `perf stat`, summed over members): context
//! switches per put 50 -> 32, CPU per put -12%, p50 to a follower -10%; 256 clients: equal.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Owns the raft thread; dropping it stops the runtime and its tasks.
pub struct RaftRuntime {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl RaftRuntime {
    pub fn start() -> io::Result<RaftRuntime> {
        let rt = Builder::new_current_thread().enable_all().thread_name("raft-blocking").build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name("raft-loop".into()).spawn(move || {
            // the sender's drop ends the wait; the runtime and its tasks go with this thread
            let _ = rt.block_on(stopped);
        })?;
        Ok(RaftRuntime { handle, _stop: stop })
    }

    /// Where the raft loop and the peer tasks run.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}
