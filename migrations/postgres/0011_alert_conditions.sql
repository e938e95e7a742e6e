-- Conditions notifiers are told about: something wrong that stays wrong
-- until something else happens (a deployment failed, an agent is silent).
-- An event that opens one inserts its key; the event that clears it is
-- only sent while the key is here, and deletes it, in the transaction that
-- queues the notifications (docs/events.md).
CREATE TABLE alert_conditions (
    key TEXT PRIMARY KEY NOT NULL,
    event_type TEXT NOT NULL,
    opened_at TIMESTAMPTZ NOT NULL
);
