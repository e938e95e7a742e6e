-- One delivery queue per notifier: the dispatch loop claims each notifier's
-- due notifications on their own, so it needs them by notifier in run_at
-- order.
CREATE INDEX notifications_pending_by_notifier ON notifications (notifier_id, run_at)
    WHERE status = 'pending';
-- An operator cancelled a notification while it was being sent: its
-- delivery is not retried (it ends 'cancelled' unless the attempt in flight
-- succeeds, then it is 'sent').
ALTER TABLE notifications ADD COLUMN cancel_requested_at TEXT;
