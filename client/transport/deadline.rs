//! Reads and writes to the peer with deadlines: a server that stops
//! answering (or stops reading) cannot hold a node's dance forever, and a
//! node that does cannot hold a `disco serve` (and its snapshot) forever.
//!
//! [`Timed`] wraps one end of a pipe to `ssh` (or serve's stdin/stdout): every read or write waits
//! with `poll` at most the I/O timeout (seconds of silence) and never past
//! the session's overall deadline; past either it fails with
//! [`Silent`] / [`Overdue`] as an `io::ErrorKind::TimedOut` error. The
//! write end can be closed early ([`Timed::close`]) so `ssh` sees EOF
//! while disco still waits for it to exit.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The server sent (or, `reading` false, took) nothing for this many seconds.
#[derive(Debug, thiserror::Error)]
#[error("{} nothing for {secs} s", if *.reading { "sent" } else { "read" })]
pub struct Silent {
    pub secs: u64,
    pub reading: bool,
}

/// The whole session went past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("did not finish within {0} s (fetch_timeout)")]
pub struct Overdue(pub u64);

/// The deadlines of one session.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub io: Duration,
    pub end: Instant,
    total: Duration,
}

impl Deadline {
    pub fn new(io_secs: u64, total_secs: u64) -> Deadline {
        let total = Duration::from_secs(total_secs.max(1));
        Deadline {
            io: Duration::from_secs(io_secs.max(1)),
            end: Instant::now() + total,
            total,
        }
    }

    /// Seconds the whole session may take.
    pub fn total_secs(&self) -> u64 {
        self.total.as_secs()
    }

    /// Waits until `fd` is ready for `events`, or fails with the deadline hit.
    fn wait(&self, fd: &impl AsFd, events: PollFlags) -> io::Result<()> {
        loop {
            let left = self.end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    Overdue(self.total.as_secs()),
                ));
            }
            let wait = left.min(self.io);
            let ms = PollTimeout::try_from(wait.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(fd.as_fd(), events)];
            match poll(&mut fds, ms) {
                Ok(0) if wait == self.io => {
                    let reading = events.contains(PollFlags::POLLIN);
                    let silent = Silent {
                        secs: self.io.as_secs(),
                        reading,
                    };
                    return Err(io::Error::new(io::ErrorKind::TimedOut, silent));
                }
                Ok(0) => continue, // the overall deadline: reported above
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// One end of the pipe to ssh, with deadlines; `None` once closed.
pub struct Timed<T> {
    inner: Option<T>,
    deadline: Deadline,
}

impl<T: AsFd> Timed<T> {
    /// Wraps `inner`; a write end is made non-blocking, so a write never
    /// waits past the deadline for a server that reads nothing.
    pub fn new(inner: T, deadline: Deadline, writer: bool) -> Timed<T> {
        if writer {
            let fd = inner.as_fd().as_raw_fd();
            if let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
                let flags =
                    nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
                let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
            }
        }
        Timed {
            inner: Some(inner),
            deadline,
        }
    }

    /// Closes this end (the peer sees EOF).
    pub fn close(&mut self) {
        self.inner = None;
    }

    fn get(&mut self) -> io::Result<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the connection is closed"))
    }
}

impl<T: AsFd + Read> Read for Timed<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = self.deadline;
        let inner = self.get()?;
        loop {
            deadline.wait(inner, PollFlags::POLLIN)?;
            // Non-blocking when it shares its file with a write end (a
            // socket on both stdin and stdout): ready may still be empty.
            match inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

impl<T: AsFd + Write> Write for Timed<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let deadline = self.deadline;
        let inner = self.get()?;
        loop {
            match inner.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    deadline.wait(inner, PollFlags::POLLOUT)?
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(i) => i.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_times_out_with_the_seconds_said() {
        let (r, _w) = std::io::pipe().unwrap();
        let mut t = Timed::new(r, Deadline::new(1, 10), false);
        let started = Instant::now();
        let e = t.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "sent nothing for 1 s");
        assert!(started.elapsed() < Duration::from_secs(3));
        let (_r, w) = std::io::pipe().unwrap();
        let mut t = Timed::new(w, Deadline::new(1, 10), true);
        // Fill the pipe: the write that no longer fits times out.
        let e = loop {
            if let Err(e) = t.write(&[0u8; 65536]) {
                break e;
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "read nothing for 1 s");
    }
}
