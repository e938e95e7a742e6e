//! The renewal sweep: one set-based statement turns every due certificate
//! without an open issuance/renewal job into a job, at most
//! [`RENEWAL_BATCH`] per statement. Besides its interval and the API's
//! wake-ups (created, "renew now"), the sweep is woken by an alarm set for
//! the earliest `renew_at` still ahead, so certificates that fall due
//! together (a fleet issued in one go, a renewal storm) are picked up when
//! they fall due rather than up to an interval later.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::engine::Engine;

/// Renewal jobs one sweep statement creates at most (bounds the transaction).
pub const RENEWAL_BATCH: u32 = 10_000;
/// Attempts a renewal job gets.
const RENEWAL_ATTEMPTS: i32 = 5;

/// One armed wake-up of the renewal sweep.
#[derive(Debug)]
pub struct RenewalAlarm {
    wake: Arc<Notify>,
    armed: Mutex<Option<(DateTime<Utc>, JoinHandle<()>)>>,
}

/// How soon the sweep runs again for a certificate that was already due
/// when its pass ended. Not at once: a due row the sweep cannot take must
/// not wake it in a loop.
pub const OVERDUE_PAUSE: Duration = Duration::from_millis(250);

impl RenewalAlarm {
    /// An alarm that wakes `wake` (the renewal loop's signal).
    pub fn new(wake: Arc<Notify>) -> Self {
        RenewalAlarm {
            wake,
            armed: Mutex::new(None),
        }
    }

    /// Arms the alarm for `at` when that is sooner than `horizon` (the
    /// loop's own interval covers anything later), replacing an alarm set
    /// for another time. A time already past (a certificate that fell due
    /// while the pass that read it ran) goes off after [`OVERDUE_PAUSE`].
    /// Must be called within a tokio runtime.
    pub fn set(&self, at: DateTime<Utc>, now: DateTime<Utc>, horizon: Duration) {
        let ahead = (at - now).to_std().unwrap_or_default().max(OVERDUE_PAUSE);
        if ahead >= horizon {
            return;
        }
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((when, handle)) = armed.as_ref()
            && *when == at
            && !handle.is_finished()
        {
            return;
        }
        if let Some((_, old)) = armed.take() {
            old.abort();
        }
        let wake = self.wake.clone();
        let handle = tokio::spawn(async move {
            tokio::time::sleep(ahead).await;
            wake.notify_one();
        });
        *armed = Some((at, handle));
    }

    /// When the alarm goes off next, if it is armed.
    pub fn armed_for(&self) -> Option<DateTime<Utc>> {
        let armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed
            .as_ref()
            .filter(|(_, h)| !h.is_finished())
            .map(|(at, _)| *at)
    }
}

impl Drop for RenewalAlarm {
    fn drop(&mut self) {
        let armed = self.armed.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((_, handle)) = armed.take() {
            handle.abort();
        }
    }
}

/// One pass of the sweep; then the alarm for the next certificate to fall
/// due within the loop's interval.
pub async fn tick(
    engine: &Engine,
    alarm: &RenewalAlarm,
    interval: Duration,
) -> crate::scheduler::ticker::TickResult {
    let started = crate::store::now();
    let created = engine
        .store
        .enqueue_due_renewals(RENEWAL_ATTEMPTS, RENEWAL_BATCH)
        .await?;
    if created > 0 {
        tracing::info!(created, "renewal jobs enqueued");
        engine.wake.wake_jobs();
        // Agent-key certificates start out awaiting their agent's CSR: wake
        // those agents' long polls.
        super::wake_agents_with_work(engine, started).await?;
    }
    if u64::from(RENEWAL_BATCH) > created
        && let Some(next) = engine.store.next_renewal_due().await?
    {
        alarm.set(next, crate::store::now(), interval);
    }
    Ok(super::report(created as usize, RENEWAL_BATCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_alarm_wakes_the_sweep_when_the_next_certificate_falls_due() {
        let wake = Arc::new(Notify::new());
        let alarm = RenewalAlarm::new(wake.clone());
        let now = Utc::now();
        let horizon = Duration::from_secs(60);
        // Beyond the loop's own interval: nothing to do.
        alarm.set(now + chrono::Duration::seconds(61), now, horizon);
        assert_eq!(alarm.armed_for(), None);

        let at = now + chrono::Duration::seconds(10);
        alarm.set(at, now, horizon);
        assert_eq!(alarm.armed_for(), Some(at));
        // An earlier certificate replaces it.
        let sooner = now + chrono::Duration::seconds(3);
        alarm.set(sooner, now, horizon);
        assert_eq!(alarm.armed_for(), Some(sooner));

        let woken = wake.notified();
        tokio::pin!(woken);
        tokio::select! {
            () = &mut woken => panic!("woken before the certificate was due"),
            () = tokio::time::sleep(Duration::from_millis(2_990)) => {}
        }
        tokio::time::timeout(Duration::from_millis(20), woken)
            .await
            .expect("woken when the certificate fell due");
        // Once only: the replaced alarm for +10 s never fires.
        assert!(
            tokio::time::timeout(Duration::from_secs(30), wake.notified())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_already_due_wakes_the_sweep_after_a_pause() {
        let wake = Arc::new(Notify::new());
        let alarm = RenewalAlarm::new(wake.clone());
        let now = Utc::now();
        let horizon = Duration::from_secs(60);
        // Fell due while the pass that found it ran: not a whole interval
        // later, and not in a loop either.
        let past = now - chrono::Duration::seconds(1);
        alarm.set(past, now, horizon);
        assert_eq!(alarm.armed_for(), Some(past));
        let woken = wake.notified();
        tokio::pin!(woken);
        tokio::select! {
            () = &mut woken => panic!("woken without the pause"),
            () = tokio::time::sleep(OVERDUE_PAUSE - Duration::from_millis(10)) => {}
        }
        tokio::time::timeout(Duration::from_millis(20), woken)
            .await
            .expect("woken after the pause");
        // Due exactly now: the same.
        alarm.set(now, now, horizon);
        tokio::time::timeout(OVERDUE_PAUSE + Duration::from_millis(10), wake.notified())
            .await
            .expect("woken after the pause");
    }
}
