"""What a run hands back: records, JSON and CSV (:mod:`.dedupe_report`), the
HTML report and result pages (:mod:`.html`, :mod:`.pages`, :mod:`.evidence`,
:mod:`.thumbs`) and the review page that acts (:mod:`.review`)."""

from matchkit.report.dedupe_report import DedupeReport
from matchkit.util.moved import forward as _forward

__all__ = ["DedupeReport"]
__getattr__ = _forward("matchkit.report", "matchkit.report.dedupe_report")
