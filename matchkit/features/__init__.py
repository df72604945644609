"""Per-image features: everything later stages need, extracted in one decode.

One pass over each file computes its byte digest, decodes a working-size copy
(JPEG draft mode keeps this cheap for camera photos) and derives the
perceptual signals from it. Large batches run in worker processes.

The layer is a package of three modules: :mod:`.record` extracts one file
(``ImageRecord``, ``extract``, the pixel digests it stores: every built-in
signal's fields from one decode), :mod:`.pool` runs that over many files
(``extract_many`` and its worker processes), and :mod:`.embedding` extracts
the embedding signal in batches (a model runs best on many images at once;
``Gallery.embed`` stores what it yields). Every
name is importable from here, as it was from the single ``features.py``;
code reads them where they are defined, so a test that patches one (say
``EXTRACT_IN_WORKERS`` or ``load_image``) patches that module.
"""

from matchkit.io.load import ImageLoadError  # noqa: F401  (re-exported)
from matchkit.features.record import (  # noqa: F401  (re-exported)
    BLANK_SPREAD, ImageRecord, _extract, _failure_reason, both_draft_decoded,
    digests_prove_same_pixels, extract,
    full_pixel_digest, is_blank, stored_pixel_digest)
from matchkit.features.pool import (  # noqa: F401  (re-exported)
    CRASH_HOOK_ENV, EXTRACT_IN_WORKERS, IMAGES_AHEAD, PROCESS_POOL_MIN_FILES, WORKER_NICE,
    _death, _extract_chunk, _extract_or_reason, _in_pool, _in_threads, _in_worker,
    _one_at_a_time, _one_thread_each, _pool_context, _solo_loop, _SoloWorker, _worker_init,
    _yield_to_caller, extract_many)
