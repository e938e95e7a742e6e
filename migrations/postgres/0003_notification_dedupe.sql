-- Notifications raised by periodic sweeps (certificate expiry, jobs that
-- failed for good) carry a key naming the event; one notifier gets one
-- notification per key however often the sweep sees the event.
ALTER TABLE notifications ADD COLUMN dedupe_key TEXT;
CREATE UNIQUE INDEX notifications_dedupe ON notifications (notifier_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
