//! Outgoing notifications, claimed like jobs so that two replicas never send
//! one twice.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::store::codec::text_enum;

text_enum! {
    /// Delivery state of a notification.
    pub enum NotificationStatus ("notification status") {
        /// Waiting to be sent from `run_at` on.
        Pending => "pending",
        /// Claimed by a sender (leased).
        Sending => "sending",
        /// Delivered (terminal).
        Sent => "sent",
        /// Gave up (terminal).
        Failed => "failed",
        /// Cancelled (terminal).
        Cancelled => "cancelled",
    }
}

/// A notification row.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Notification {
    /// UUID text.
    pub id: String,
    /// Notifier instance that delivers it.
    pub notifier_id: String,
    /// Event type, e.g. `"certificate.expiring"`.
    pub event_type: String,
    /// Subject line / summary.
    pub subject: Option<String>,
    /// Event payload.
    #[sqlx(json)]
    pub payload: Value,
    /// Delivery state.
    pub status: NotificationStatus,
    /// Delivery attempts (counted at claim).
    pub attempts: i32,
    /// Attempt budget.
    pub max_attempts: i32,
    /// Next attempt time.
    pub run_at: DateTime<Utc>,
    /// Lease owner.
    pub lease_owner: Option<String>,
    /// Lease expiry while `Sending`.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Last delivery error.
    pub last_error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Delivery time.
    pub sent_at: Option<DateTime<Utc>>,
}

impl Notification {
    /// The lease token of a claimed notification.
    pub fn lease(&self) -> Option<NotificationLease> {
        match (&self.status, &self.lease_owner) {
            (NotificationStatus::Sending, Some(owner)) => Some(NotificationLease {
                notification_id: self.id.clone(),
                owner: owner.clone(),
                attempt: self.attempts,
            }),
            _ => None,
        }
    }
}

/// Proof of a notification claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NotificationLease {
    /// The notification.
    pub notification_id: String,
    /// Lease owner.
    pub owner: String,
    /// Attempt counted by the claim.
    pub attempt: i32,
}

/// Input of [`crate::store::Store::enqueue_notification`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// Notifier instance.
    pub notifier_id: String,
    /// Event type.
    pub event_type: String,
    /// Subject.
    pub subject: Option<String>,
    /// Payload.
    pub payload: Value,
    /// Attempt budget (e.g. 8).
    pub max_attempts: i32,
}

/// What cancelling a notifier's queue did
/// ([`crate::store::Store::cancel_notifier_notifications`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CancelledNotifications {
    /// Pending notifications cancelled now (never delivered).
    pub cancelled: u64,
    /// Notifications being sent right now: each ends `cancelled` when its
    /// attempt fails or its lease is lost, or `sent` if that attempt
    /// succeeds; none is attempted again.
    pub in_flight: u64,
}
