"""``matchkit serve``: the gallery API over HTTP (FastAPI + uvicorn).

Install with ``pip install 'matchkit[serve]'``. :func:`create_app` returns
the ASGI app; ``matchkit serve --gallery G`` runs it with uvicorn, and
``matchkit serve keys add --gallery G --scope read`` makes an API key (that
part needs no web framework, so ``keys`` is imported lazily from here).
"""

__all__ = ["create_app", "ServeSettings"]


def __getattr__(name: str):
    if name == "create_app":
        from matchkit.serve.app import create_app
        return create_app
    if name == "ServeSettings":
        from matchkit.serve.state import ServeSettings
        return ServeSettings
    raise AttributeError(name)
