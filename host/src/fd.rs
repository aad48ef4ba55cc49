//! The file-descriptor limit: one socket is one descriptor, so RLIMIT_NOFILE bounds the
//! connections one process holds (server and generator alike).

use std::io;

/// The process's file-descriptor limit before and after raising the soft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

impl FdLimit {
    /// The limit in force now, unchanged (`soft_before` is `soft`).
    pub fn current() -> io::Result<FdLimit> {
        let (soft, hard) = rlimit::Resource::NOFILE.get()?;
        Ok(FdLimit {
            soft_before: soft,
            soft,
            hard,
        })
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (raising the hard limit needs
/// privileges this tool does not assume).
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (soft_before, hard) = rlimit::Resource::NOFILE.get()?;
    if soft_before < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    Ok(FdLimit {
        soft_before,
        soft,
        hard,
    })
}
