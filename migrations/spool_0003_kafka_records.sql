-- Records as Kafka clients send them, kept losslessly: a binary key, a null value (a
-- tombstone), headers in order with repeated names and binary or null values, the partition
-- the client chose and its CreateTime. Rows written before this read back as they did: every
-- new column's default means "as before".
--
-- Columns are added rather than the table rebuilt: a rebuild would copy every held row at
-- startup, doubling the file of a spool that may be full.
--
-- `key` keeps its TEXT declaration: new rows store a BLOB there (SQLite keeps a BLOB as a
-- BLOB whatever the column's affinity); older rows hold TEXT, read as its UTF-8 bytes.

-- 1: the value is null (and `value` holds X''); 0: `value` is the value.
ALTER TABLE held ADD COLUMN tombstone INTEGER NOT NULL DEFAULT 0;
-- The headers of a newer row, in order (see `spool::encode_headers`); NULL: the headers are
-- the JSON object in `headers` (older rows), or there are none.
ALTER TABLE held ADD COLUMN header_list BLOB;
-- The partition the client chose; NULL: Kafka's partitioner picks one.
ALTER TABLE held ADD COLUMN kafka_partition INTEGER;
-- The client's CreateTime in milliseconds; NULL: the time it is published.
ALTER TABLE held ADD COLUMN create_time_ms INTEGER;
