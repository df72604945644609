"""From records to decisions: candidate pairs (:mod:`.candidates`), the
burstiness check (:mod:`.burst`), verification and the pair decision
(:mod:`.pairs`, :mod:`.verification`, :mod:`.evidence`, :mod:`.pairfeatures`,
:mod:`.calibrate`, :mod:`.thresholds`, :mod:`.profiles`),
picture and template checks (:mod:`.picture`, :mod:`.framed`,
:mod:`.template`), stored matching state for incremental runs
(:mod:`.incremental`), queries against a gallery (:mod:`.query`), clusters
and keepers (:mod:`.cluster`, :mod:`.keeper`), and the edit suites that make
calibration sets (:mod:`.edits`, :mod:`.pairsets`).

``matchkit.match.PairMatcher`` (the old ``match.py``) still resolves, with a
deprecation warning: import it from :mod:`matchkit.match.pairs`."""

from matchkit.util.moved import forward as _forward

__getattr__ = _forward("matchkit.match", "matchkit.match.pairs")
