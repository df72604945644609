"""The gallery: one SQLite database of image records and signal payloads
beside its index files (:mod:`.gallery`, whose ``Gallery`` is made of the
``gallery_*`` modules: reading and writing rows, signals, index files and
their check, vectors, matching state; its tables in :mod:`.schema`, its row
types in :mod:`.records`), adding files (:mod:`.adding`), the compact
encodings of stored features (:mod:`.stored`, :mod:`.stored_text`), and
galleries split into shards by a stable hash (:mod:`.shards`)."""
