//! The free-space floor under storage writes: while the data directory's filesystem is
//! nearly full, writes are refused up front (and resume by themselves once space is back),
//! instead of reaching a failed disk write, which stops storage until a restart.

use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a reading of the free space is trusted: a `statvfs` per batch would be cheap, but
/// this keeps it off the writer's path under load while still resuming within a blink.
const RECHECK: Duration = Duration::from_millis(100);

/// Whether the filesystem holding the data directory has less than `floor` bytes free.
pub struct DiskGuard {
    dir: PathBuf,
    floor: u64,
    checked_at: Mutex<Option<Instant>>,
    full: AtomicBool,
}

impl DiskGuard {
    pub fn new(dir: PathBuf, floor: u64) -> Self {
        Self {
            dir,
            floor,
            checked_at: Mutex::new(None),
            full: AtomicBool::new(false),
        }
    }

    /// True while free space is below the floor, read again at most every 100 ms. The
    /// second value says whether this call saw the state change (for a log line).
    pub fn full(&self) -> (bool, bool) {
        if self.floor == 0 {
            return (false, false);
        }
        let mut checked = self.checked_at.lock();
        let was = self.full.load(Ordering::Acquire);
        if checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return (was, false);
        }
        *checked = Some(Instant::now());
        let now = match free_bytes(&self.dir) {
            Ok(free) => free < self.floor,
            // Unknown: let the write try; a failed disk write is still caught.
            Err(_) => false,
        };
        self.full.store(now, Ordering::Release);
        (now, now != was)
    }
}

#[cfg(target_os = "linux")]
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(not(target_os = "linux"))]
fn free_bytes(_dir: &std::path::Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_is_full_and_zero_never_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            DiskGuard::new(dir.path().into(), u64::MAX).full(),
            (true, true)
        );
        assert_eq!(DiskGuard::new(dir.path().into(), 0).full(), (false, false));
        assert_eq!(DiskGuard::new(dir.path().into(), 1).full(), (false, false));
    }
}
