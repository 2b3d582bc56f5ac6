-- Facts about the spool itself, one integer per key.
--   discarded_seq: the seq of the last `held_discarded` event whose dead records are deleted.
--                  The rows go after the event commits; a crash in between is finished at the
--                  next start from here.
--   probe:         written to learn whether the disk has room again after it was full.
CREATE TABLE spool_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
