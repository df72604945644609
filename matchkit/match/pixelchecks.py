"""What a matcher reads of images and pairs from their stored data outside
local verification: thumbnails (lightness, marks, frame-to-frame proof,
content masks, the picture's share), pixel digests, sizes and formats.

Split from ``pairs.py``: ``PixelChecks`` is mixed into ``PairMatcher``, whose
global evidence, keeper choice and report ask these questions per image or
pair (it reads the matcher's ``cache``, ``sizes``, ``settings`` and memos).
"""

from __future__ import annotations

import cv2
import numpy as np

from matchkit.signals.hashing import hamming
from matchkit.features import both_draft_decoded, digests_prove_same_pixels, full_pixel_digest
from matchkit.match.keeper import FILL_TOLERANCE, hull_share
from matchkit.relation import in_level, redrawn_icons
from matchkit.match.evidence import (SAME_PIXELS_MAX_DIFF, SAME_PIXELS_OUTLIERS, PairEvidence,
                                     relation_of)
from matchkit.match.content import thumb_content_mask
from matchkit.match.settle import reframed
from matchkit.match.template import picture_mask
from matchkit.signals.thumbcheck import frames_prove_copy, marks, thumbnails_refute


class PixelChecks:
    """Checks on a matcher's images' stored pixels (mixed into
    ``pairs.PairMatcher``)."""

    def mark_redrawn(self, ev: PairEvidence) -> None:
        """Flag a pair of lossless icons of one size (``relation.redrawn_icons``)."""
        if ev.a in self.sizes and ev.b in self.sizes and redrawn_icons(
                self.sizes[ev.a], self.formats[ev.a], self.sizes[ev.b], self.formats[ev.b]):
            ev.extra["redrawn"] = True

    def lightness(self, image_id: int) -> float | None:
        """Mean grey level of the image's stored thumbnail (None without one)."""
        if image_id not in self._lightness:
            thumb = self._thumb(image_id) if self.settings.local_features else None
            self._lightness[image_id] = None if thumb is None else float(thumb.mean())
        return self._lightness[image_id]

    def thumbnails_refute(self, ev: PairEvidence) -> bool:
        """Whether the stored thumbnails refute a match decided on global
        signals alone (``thumbcheck.thumbnails_refute``: a near-blank picture
        whose few marks lie elsewhere, or thumbnails that clearly disagree);
        then local verification, if the pair qualifies, decides it."""
        marked = self._marked_thumbs(ev)
        if marked is None:
            return False
        ta, tb, shares = marked
        if thumbnails_refute(ta, tb, bool(ev.extra.get("dihedral")), shares):
            ev.extra["thumbnails_refute"] = True
            return True
        return False

    def frames_rule(self, ev: PairEvidence) -> bool:
        """Decide ``ev`` as "frames" when its thumbnails prove a copy whose
        relation the level groups (``frames_prove_copy``); whether it did."""
        if not self.frames_prove_copy(ev):
            return False
        kind = relation_of(ev, global_only=True)
        # The pHash moved far over pixels that stayed: something was laid
        # over the picture (a logo), not a mere resize.
        ev.extra["relation"] = kind = "edited" if kind == "resized" else kind
        ev.rule = "frames" if in_level(kind, self.settings.level) else ""
        return bool(ev.rule)

    def frames_prove_copy(self, ev: PairEvidence) -> bool:
        """Whether the stored thumbnails of two images of one aspect ratio,
        frame to frame, prove a copy that the pHash missed
        (``thumbcheck.frames_prove_copy``: a logo on a smooth wallpaper)."""
        if (ev.extra.get("dihedral") or ev.a not in self.sizes or ev.b not in self.sizes
                or reframed(self.sizes[ev.a], self.sizes[ev.b])):
            return False
        marked = self._marked_thumbs(ev)
        return marked is not None and frames_prove_copy(*marked)

    def _marked_thumbs(self, ev: PairEvidence
                       ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
        """The pair's stored thumbnails and their shares of marks
        (``thumbcheck.marks``, kept per image); None without thumbnails."""
        ta, tb = self._thumb(ev.a), self._thumb(ev.b)
        if ta is None or tb is None:
            return None
        for i, t in ((ev.a, ta), (ev.b, tb)):
            if i not in self._marked:
                self._marked[i] = marks(t)[0]
        return ta, tb, (self._marked[ev.a], self._marked[ev.b])

    def _thumb(self, image_id: int) -> np.ndarray | None:
        lf = self.cache.get(image_id)
        return lf[1] if lf is not None else None

    def may_share_pixels(self, a: int, b: int) -> bool:
        """False when the stored grey thumbnails prove the two images' pixels
        differ (an overlay, a blur, another picture): then the full-resolution
        decode that compares pixel digests is not worth doing.

        Identical pixels give near-identical thumbnails; they differ only by
        how each file was reduced (a JPEG decoded in draft mode, a PNG at full
        size), a few grey levels at strong edges. So only a difference far
        beyond that, at more than a few thumbnail pixels, counts as proof.
        Without thumbnails (``--hash-only``) nothing is proven."""
        ta, tb = self._thumb(a), self._thumb(b)
        if ta is None or tb is None or ta.shape != tb.shape:
            return True
        diff = cv2.absdiff(ta, tb)
        return int(np.count_nonzero(diff > SAME_PIXELS_MAX_DIFF)) <= SAME_PIXELS_OUTLIERS

    def same_pixels(self, ev: PairEvidence) -> bool:
        """Whether two images of one size with near-equal *unrotated* hashes
        have identical pixels; only then is it worth decoding both files at
        full resolution (the digests are kept in the gallery)."""
        a, b = ev.a, ev.b
        distance = hamming(self.plain[a][0], self.plain[b][0])
        if distance > self.settings.exact_check_distance or not self.may_share_pixels(a, b):
            return False
        da, db = self.gallery.pixel_digest(a), self.gallery.pixel_digest(b)
        if both_draft_decoded(da, db) and (
                distance or self.qualities.get(a) != self.qualities.get(b)):
            # Identical pixels, both decoded in draft mode at one size, come
            # from one set of coefficients quantised by one table: equal
            # hashes and quality estimates. A difference in either proves
            # other pixels, with no full-size decode.
            return False
        return digests_prove_same_pixels(
            da, db, lambda: self._full_pixel_digest(a), lambda: self._full_pixel_digest(b))

    def _full_pixel_digest(self, image_id: int) -> str | None:
        """``features.full_pixel_digest`` of a stored image's file, once per
        matcher: the one file read of matching outside templated images, for
        the rare pair ``same_pixels`` cannot settle from stored digests."""
        if image_id not in self._full_digests:
            path = self.paths.get(image_id)
            self._full_digests[image_id] = (
                None if path is None else full_pixel_digest(path, self.settings))
        return self._full_digests[image_id]

    def content_mask(self, image_id: int, thumb: np.ndarray | None = None) -> np.ndarray | None:
        """Where the picture is, in thumbnail pixels (None: everywhere): a
        template's content slot, or what lies inside a flat fill."""
        if image_id not in self._masks:
            self._masks[image_id] = thumb_content_mask(
                self._thumb(image_id) if thumb is None else thumb)
        return self._masks[image_id]

    def picture_fractions(self, evidence: list[PairEvidence]) -> dict[int, float]:
        """Share of each image of ``evidence`` that is picture (``content_mask``;
        1 without local features, where no thumbnail is stored)."""
        out = {}
        for i in {x for ev in evidence for x in (ev.a, ev.b)}:
            mask = self.content_mask(i) if self.settings.local_features else None
            out[i] = 1.0 if mask is None else float(mask.mean())
        return out

    def picture_share(self, image_id: int) -> float:
        """Fraction of the image that is the picture itself: without a template
        frame (screenshot furniture) or flat synthetic fill connected to the
        border (padding, the canvas of a rotated copy). Used to choose keepers;
        1.0 when no thumbnail is stored (``--hash-only``)."""
        if image_id in self.templated:
            return float(self._masks[image_id].mean())
        if image_id not in self._picture_shares:  # (keepers are chosen again per pass)
            thumb = self._thumb(image_id)
            # The hull: flat patches inside the picture (a dark sky) are not fill.
            self._picture_shares[image_id] = (
                1.0 if thumb is None else hull_share(picture_mask(thumb, tolerance=FILL_TOLERANCE)))
        return self._picture_shares[image_id]

    def rephotographed(self, ev: PairEvidence) -> tuple[int, float] | None:
        """The image of a matched pair that is a re-photograph of the other
        (``picture.rephotograph``, found when the pair was verified) and the
        share of its frame the shown picture takes; None when neither is."""
        side, o = ev.extra.get("rephoto"), ev.overlap
        if not ev.rule or side not in ("a", "b") or o is None:
            return None
        return (ev.a, o.coverage_a) if side == "a" else (ev.b, o.coverage_b)
