"""Reading the user's files: image decoding (EXIF orientation, draft mode,
pixel limits, JPEG quality) in :mod:`.load`, digests of files and pixels in
:mod:`.digest`, and moving files with an undo journal in :mod:`.moves`.

The decoding API is also here, as before the re-layout: ``matchkit.io.load_image``.
"""

from matchkit.io.load import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, TRANSPARENT_BACKGROUND,
                              ImageLoadError, LoadedImage, iter_image_files, load_image, shrink)
from matchkit.util.moved import forward as _forward

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "TRANSPARENT_BACKGROUND", "ImageLoadError",
           "LoadedImage", "iter_image_files", "load_image", "shrink"]
__getattr__ = _forward("matchkit.io", "matchkit.io.load")
