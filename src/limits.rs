//! The process's file-descriptor limit: raised from its soft value to the hard one at
//! start (as Go's runtime does), and read to size the connection limit below it.

use rustix::process::{Resource, getrlimit, setrlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
/// A refusal (a seccomp filter, say) is logged and the limit stays as it was.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = getrlimit(Resource::Nofile);
    let was = lim.current.unwrap_or(u64::MAX);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => log::info!("file descriptor limit raised from {was} to {}", fd_limit()),
            Err(e) => log::warn!("cannot raise the file descriptor limit from {was}: {e}"),
        }
    }
    fd_limit()
}

/// The soft `RLIMIT_NOFILE` now (`u64::MAX`: unlimited).
pub(crate) fn fd_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_is_raised_and_read_back() {
        let before = super::fd_limit();
        let soft = super::raise_fd_limit();
        assert!(soft >= before, "{soft} < {before}");
        assert_eq!(super::fd_limit(), soft);
    }
}
