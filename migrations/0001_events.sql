-- The append-only event log: the only source of truth.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    at         TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    topic      TEXT,
    request_id TEXT,
    data       TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);

CREATE INDEX events_topic ON events (topic, seq);
CREATE INDEX events_request ON events (request_id, seq);
CREATE INDEX events_actor ON events (actor, seq);
CREATE INDEX events_kind ON events (kind, seq);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE refused');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE refused');
END;

-- seq is gap-free: each new row must follow the last one exactly.
CREATE TRIGGER events_gap_free BEFORE INSERT ON events
WHEN NEW.seq != (SELECT COALESCE(MAX(seq), 0) + 1 FROM events)
BEGIN
    SELECT RAISE(ABORT, 'events.seq must be the last seq plus one');
END;
