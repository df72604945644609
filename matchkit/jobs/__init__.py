"""What users run, each a plain function or estimator over a gallery:
:mod:`.dedupe`, :mod:`.check`, :mod:`.classify` (label), :mod:`.search`,
:mod:`.filters`, :mod:`.labels` and :mod:`.metadata`."""
