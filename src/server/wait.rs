//! Waiting on a socket in a connection's own thread: poll(2) on the socket and the
//! board's generation, with the session's deadline as the timeout. The lean and the
//! stock engine's threads both wait here.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::connection::Wake;

/// What poll(2) reported.
#[derive(Debug, Default)]
pub(super) struct Ready {
    /// The socket has data, EOF or an error to read.
    pub readable: bool,
    pub writable: bool,
}

impl Wake for Ready {
    fn writable(&mut self) -> io::Result<bool> {
        Ok(self.writable)
    }

    fn readable(&mut self) -> io::Result<bool> {
        Ok(self.readable)
    }

    fn timer_due(&mut self, deadline: Instant) -> bool {
        Instant::now() >= deadline
    }
}

/// Blocks until `fd` is readable (when asked) or writable (when asked), `board_fd` is
/// readable (the caller then reads the board itself), or `timeout` passes (never, with
/// `None`). EINTR returns an empty [`Ready`].
pub(super) fn poll(
    fd: RawFd,
    want_read: bool,
    want_write: bool,
    board_fd: Option<RawFd>,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let events = if want_read { libc::POLLIN } else { 0 } | if want_write { libc::POLLOUT } else { 0 };
    let mut fds = [
        libc::pollfd { fd, events, revents: 0 },
        libc::pollfd {
            fd: board_fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let timeout_ms = match timeout {
        None => -1,
        // Round up, so a deadline 0.4 ms away does not turn into a busy loop.
        Some(timeout) => timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
    };
    // SAFETY: `fds` is a valid array of 2 pollfd for the duration of the call; a
    // negative fd is ignored by poll(2).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted {
            Ok(Ready::default())
        } else {
            Err(error)
        };
    }
    let hangup = libc::POLLERR | libc::POLLHUP;
    Ok(Ready {
        readable: fds[0].revents & (libc::POLLIN | hangup) != 0,
        writable: fds[0].revents & (libc::POLLOUT | hangup) != 0,
    })
}
