"""matchkit: find near-duplicate images and label images by their nearest neighbours.

The tree is the pipeline. Data flows one way, load -> features -> index ->
candidates -> verify -> decide -> cluster -> report, and each part of the
package imports only from the parts listed before it (``tests/test_layers.py``
reads this list and fails on an upward import or a cycle between parts):

Layers:
    util         helpers that know nothing of images: atomic files, locks, JSON, progress
    io           reading images (decode, EXIF, JPEG quality) and moving files with undo
    index        nearest-neighbour indexes: Hamming (HNSW), IVF of visual words, vectors
    signals      what each image gives: digests, pHash, colour, ORB, icons, thumbnails, OCR
    embed        learned embeddings: CLIP, ONNX models, their registry
    relation     the vocabulary of how two images relate (kinds of edits, levels)
    config       Settings: every tunable, as data
    features     extraction: one decoded image -> one record of all configured signals
    store        the gallery: SQLite records, index files, shards
    match        candidates, verification, decision, calibration, clusters, keepers
    distributed  the same work on a Ray cluster
    report       JSON/CSV records, HTML pages, the review page
    jobs         what users run: dedupe, check, label, search, metadata
    serve        the HTTP service
    cli          the command line, a thin layer over the jobs

Modules that moved in this layout still import from their old paths
(``matchkit.gallery``, ``matchkit.match.PairMatcher``...) for one release,
with a ``DeprecationWarning`` naming the new one (``util/moved.py``).
"""

from matchkit.util.version import __version__
from matchkit.config import Settings
from matchkit.jobs.dedupe import dedupe
from matchkit.store.gallery import Gallery, GalleryError
from matchkit.io.load import ImageLoadError, load_image
from matchkit.report.dedupe_report import DedupeReport
from matchkit.store.shards import ShardedGallery, open_gallery
from matchkit.util.moved import install as _install_moved

_install_moved()

__all__ = ["Settings", "dedupe", "Gallery", "GalleryError", "ImageLoadError",
           "load_image", "DedupeReport", "ShardedGallery", "open_gallery", "__version__"]
