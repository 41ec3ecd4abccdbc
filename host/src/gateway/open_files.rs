//! The process's open-file limit, and the listeners' connection caps fitted to it: at start-up
//! and on every reload, so a reloaded `max_connections` cannot promise more connections than
//! there are descriptors for.

use crate::config::ListenerConfig;

/// Raises the process's open-file soft limit to its hard limit; returns the new soft limit, or
/// `None` (with a warning) when it cannot.
pub(super) fn raise() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(err) => {
            tracing::warn!(%err, "cannot raise the open-file limit");
            None
        }
    }
}

/// Lowers the `max_connections` of `listeners` to fit `open_files` (see
/// [`fit_connection_caps`]), with a warning for each one lowered. Returns whether it lowered
/// any.
pub(super) fn fit<'a>(
    listeners: impl IntoIterator<Item = &'a mut ListenerConfig>,
    open_files: u64,
) -> bool {
    let mut listeners: Vec<&mut ListenerConfig> = listeners.into_iter().collect();
    let mut caps: Vec<usize> = listeners.iter().map(|l| l.limits.max_connections).collect();
    if !fit_connection_caps(&mut caps, open_files) {
        return false;
    }
    for (listener, cap) in listeners.iter_mut().zip(caps) {
        let limits = &mut listener.limits;
        if cap < limits.max_connections {
            tracing::warn!(
                listener = %listener.name,
                open_files,
                configured = limits.max_connections,
                max_connections = cap,
                "the open-file limit is below what max_connections needs; lowered the \
                 cap to fit (raise the hard limit with ulimit -Hn or LimitNOFILE)"
            );
            limits.max_connections = cap;
        }
    }
    true
}

/// Descriptors kept for everything that is not a client connection: listeners, the log file,
/// plugin files, the epoch ticker, stdio.
const RESERVED_FILES: u64 = 64;

/// Lowers `caps` (connections per listener) in proportion so that two descriptors per connection
/// (client and upstream) and [`RESERVED_FILES`] fit `open_files`; each listener keeps at least
/// one. Returns whether it lowered any.
fn fit_connection_caps(caps: &mut [usize], open_files: u64) -> bool {
    let wanted: u64 = caps.iter().map(|&cap| cap as u64).sum();
    let room = open_files.saturating_sub(RESERVED_FILES) / 2;
    if wanted <= room {
        return false;
    }
    for cap in caps.iter_mut() {
        let share = (*cap as u64).saturating_mul(room) / wanted.max(1);
        *cap = usize::try_from(share).unwrap_or(usize::MAX).max(1);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::fit_connection_caps;

    #[test]
    fn caps_that_fit_the_open_file_limit_are_kept() {
        let mut caps = [4096, 100];
        assert!(!fit_connection_caps(&mut caps, 1 << 20));
        assert_eq!(caps, [4096, 100]);
    }

    #[test]
    fn caps_past_the_open_file_limit_are_lowered_in_proportion() {
        // 1024 descriptors: 64 reserved, two per connection: 480 connections in all.
        let mut caps = [4096, 4096];
        assert!(fit_connection_caps(&mut caps, 1024));
        assert_eq!(caps, [240, 240]);
        let mut caps = [3000, 1000, 1];
        assert!(fit_connection_caps(&mut caps, 1024));
        assert_eq!(caps, [359, 119, 1]);
        assert!(caps.iter().sum::<usize>() <= 480);
    }
}
