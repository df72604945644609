"""The Hugging Face hub as the embedders meet it: whether the user asked for
no network, a quick reachability check, and quiet loading. Shared by the
CLIP and multilingual text models (``clip.py``, ``mtext.py``)."""

from __future__ import annotations

import contextlib
import os


def hub_offline() -> bool:
    """True when the user asked for no network (read now, not at import time)."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' progress bars and info logs while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub (HF_ENDPOINT honoured) before handing over to
    huggingface_hub, whose retries take about half a minute to give up offline."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
