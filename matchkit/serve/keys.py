"""API keys of one gallery: random tokens, stored only as SHA-256 digests.

A key is shown once, when it is made (``matchkit serve keys add``); the
gallery folder keeps ``serve/keys.json`` with each key's digest, scope and
name, so a copied or leaked keys file lets nobody in. Scopes are ordered:
``read`` (look, search, check, label) < ``write`` (add, change, remove
images) < ``admin`` (everything, including moving files in dedupe jobs).
Tokens carry 256 random bits, so comparing digests needs no slow hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from matchkit.util.fs import atomic_write_bytes

SCOPES = ("read", "write", "admin")
#: Folder inside a gallery where the server keeps its own files.
SERVE_DIR = "serve"
KEYS_FILE = "keys.json"
TOKEN_PREFIX = "mk_"


class KeyStoreError(ValueError):
    """A key file or a key request that cannot be used (one line)."""


@dataclass
class ApiKey:
    """One stored key: never the token itself."""

    id: str
    sha256: str
    scope: str
    name: str = ""
    created: str = ""

    def public(self) -> dict:
        return {"id": self.id, "scope": self.scope, "name": self.name, "created": self.created}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def scope_allows(have: str, need: str) -> bool:
    """Whether a key of scope ``have`` may do what needs ``need``."""
    return SCOPES.index(have) >= SCOPES.index(need)


class KeyStore:
    """The keys of one gallery folder (``G/serve/keys.json``), reloaded when the
    file changes so keys added by the CLI work without a restart."""

    def __init__(self, gallery: str | os.PathLike):
        self.file = Path(gallery) / SERVE_DIR / KEYS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_digest: dict[str, ApiKey] = {}

    def _read(self) -> list[ApiKey]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise KeyStoreError(f"cannot read API keys {self.file}: {e}") from None
        return [ApiKey(**{k: str(v) for k, v in item.items() if k in ApiKey.__dataclass_fields__})
                for item in data.get("keys", [])]

    def keys(self) -> list[ApiKey]:
        return self._read()

    def lookup(self, token: str) -> ApiKey | None:
        """The stored key for ``token`` (None: not a key of this gallery)."""
        with self._lock:
            try:
                st = self.file.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._by_digest = {k.sha256: k for k in self._read()} if stamp else {}
                self._stamp = stamp
            return self._by_digest.get(digest(token))

    def add(self, scope: str, name: str = "") -> tuple[str, ApiKey]:
        """Make a key; returns the token (shown once) and its stored record."""
        if scope not in SCOPES:
            raise KeyStoreError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        d = digest(token)
        key = ApiKey(id=d[:12], sha256=d, scope=scope, name=name,
                     created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._write(self._read() + [key])
        return token, key

    def remove(self, key_id: str) -> bool:
        keys = self._read()
        kept = [k for k in keys if k.id != key_id]
        if len(kept) == len(keys):
            return False
        self._write(kept)
        return True

    def _write(self, keys: list[ApiKey]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"keys": [asdict(k) for k in keys]}, indent=1).encode()
        atomic_write_bytes(self.file, data)
        os.chmod(self.file, 0o600)
