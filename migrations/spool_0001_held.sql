-- The spool of held records (spool.db, beside the event log). Record payloads are data, not
-- events: rows are deleted once Kafka has acknowledged them.
CREATE TABLE held (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- arrival order, never reused
    topic       TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('held', 'dead')),
    key         TEXT,
    value       BLOB    NOT NULL,
    headers     TEXT,                     -- JSON object, or NULL
    producer    TEXT    NOT NULL,
    size        INTEGER NOT NULL,         -- key + value + headers, as the bounds count it
    accepted_at TEXT    NOT NULL
);

CREATE INDEX held_by_topic ON held (topic, state, id);

-- Records published per topic, saved now and then (informational, may lag after a crash).
CREATE TABLE published (
    topic TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
