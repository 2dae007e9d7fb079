//! Quotas over calendar windows (UTC days and months): which window a moment falls in, when it
//! ends, and a counter that starts over when the window changes. Pure: time is a parameter.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::model::QuotaWindow;
use crate::text::{civil_from_days, days_from_civil};

const DAY: u64 = 86_400;

/// The window `now` falls in, as an id that only grows, and when that window ends.
pub fn window(kind: QuotaWindow, now: SystemTime) -> (u64, SystemTime) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day = secs / DAY;
    match kind {
        QuotaWindow::Day => (day, UNIX_EPOCH + Duration::from_secs((day + 1) * DAY)),
        QuotaWindow::Month => {
            let (y, m, _) = civil_from_days(day as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let next = days_from_civil(ny, nm, 1) as u64;
            (
                (y as u64) * 12 + u64::from(m) - 1,
                UNIX_EPOCH + Duration::from_secs(next * DAY),
            )
        }
    }
}

/// Accepted requests in the current window.
#[derive(Debug)]
pub struct QuotaCounter {
    kind: QuotaWindow,
    /// (window id, requests accepted in it)
    state: Mutex<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaVerdict {
    Allow { remaining: u64, resets_in: Duration },
    Spent { resets_in: Duration },
}

impl QuotaCounter {
    pub fn new(kind: QuotaWindow) -> Self {
        Self {
            kind,
            state: Mutex::new((0, 0)),
        }
    }

    pub fn kind(&self) -> QuotaWindow {
        self.kind
    }

    /// Counts one request against `limit` at `now` if there is room.
    pub fn take(&self, limit: u64, now: SystemTime) -> QuotaVerdict {
        let (id, ends) = window(self.kind, now);
        let resets_in = ends.duration_since(now).unwrap_or_default();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Only a later window resets the count: a wall clock stepped back across midnight
        // (NTP, a restored VM) keeps counting in the window it has already seen.
        if id > s.0 {
            *s = (id, 0);
        }
        if s.1 >= limit {
            return QuotaVerdict::Spent { resets_in };
        }
        s.1 += 1;
        QuotaVerdict::Allow {
            remaining: limit - s.1,
            resets_in,
        }
    }

    /// (window id, used), for persisting.
    pub fn snapshot(&self) -> (u64, u64) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `n` requests counted elsewhere (by the process this one took over from) if they
    /// belong to the window of `now`.
    pub fn add(&self, window_id: u64, n: u64, now: SystemTime) {
        if window(self.kind, now).0 == window_id {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.0 < window_id {
                *s = (window_id, 0);
            }
            if s.0 == window_id {
                s.1 = s.1.saturating_add(n);
            }
        }
    }

    /// Restores a persisted count if it belongs to the window of `now`.
    pub fn restore(&self, window_id: u64, used: u64, now: SystemTime) {
        if window(self.kind, now).0 == window_id {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // Keep whichever is larger: a reload may restore into a counter already counting.
            if s.0 != window_id || s.1 < used {
                *s = (window_id, used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: u32, d: u32, secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(days_from_civil(y, m, d) as u64 * DAY + secs)
    }

    #[test]
    fn calendar_windows_in_utc() {
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        let (_, ends) = window(QuotaWindow::Month, at(2026, 12, 31, 100));
        assert_eq!(ends, at(2027, 1, 1, 0));
        let (_, ends) = window(QuotaWindow::Day, at(2026, 11, 22, 3600));
        assert_eq!(ends, at(2026, 11, 23, 0));
        assert_ne!(
            window(QuotaWindow::Month, at(2026, 1, 31, 0)).0,
            window(QuotaWindow::Month, at(2026, 2, 1, 0)).0
        );
    }

    #[test]
    fn a_spent_quota_comes_back_with_the_next_window() {
        let q = QuotaCounter::new(QuotaWindow::Day);
        let morning = at(2026, 11, 22, 8 * 3600);
        assert!(matches!(
            q.take(2, morning),
            QuotaVerdict::Allow { remaining: 1, .. }
        ));
        assert!(matches!(
            q.take(2, morning),
            QuotaVerdict::Allow { remaining: 0, .. }
        ));
        assert_eq!(
            q.take(2, morning),
            QuotaVerdict::Spent {
                resets_in: Duration::from_secs(16 * 3600)
            }
        );
        assert!(matches!(
            q.take(2, at(2026, 11, 23, 1)),
            QuotaVerdict::Allow { remaining: 1, .. }
        ));
        // The clock steps back a day: the count of the newest window goes on, no fresh quota.
        assert!(matches!(
            q.take(2, morning),
            QuotaVerdict::Allow { remaining: 0, .. }
        ));
        assert!(matches!(q.take(2, morning), QuotaVerdict::Spent { .. }));
    }

    #[test]
    fn restored_counts_only_apply_to_their_own_window() {
        let q = QuotaCounter::new(QuotaWindow::Month);
        let now = at(2026, 11, 22, 0);
        let this_month = window(QuotaWindow::Month, now).0;
        q.restore(this_month - 1, 99, now);
        assert!(matches!(
            q.take(100, now),
            QuotaVerdict::Allow { remaining: 99, .. }
        ));
        q.restore(this_month, 99, now);
        assert!(matches!(
            q.take(100, now),
            QuotaVerdict::Allow { remaining: 0, .. }
        ));
    }
}
