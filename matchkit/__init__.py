"""matchkit: find near-duplicate images and label images by their nearest neighbours."""

__version__ = "0.1.0"

from matchkit.config import Settings  # noqa: E402
from matchkit.dedupe import dedupe  # noqa: E402
from matchkit.gallery import Gallery, GalleryError  # noqa: E402
from matchkit.io import ImageLoadError, load_image  # noqa: E402
from matchkit.report import DedupeReport  # noqa: E402
from matchkit.shards import ShardedGallery, open_gallery  # noqa: E402

__all__ = ["Settings", "dedupe", "Gallery", "GalleryError", "ImageLoadError",
           "load_image", "DedupeReport", "ShardedGallery", "open_gallery", "__version__"]
