"""The gallery: one SQLite database of image records and signal payloads
beside its index files (:mod:`.gallery`), the compact encodings of stored
features (:mod:`.stored`, :mod:`.stored_text`), and galleries split into
shards by a stable hash (:mod:`.shards`)."""
