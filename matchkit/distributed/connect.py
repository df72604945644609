"""Ray itself, as every part of a Ray run needs it: imported only when used
(:class:`RayUnavailable` when it is not installed), the cluster joined
(:func:`connect`), and the node this process runs on.

Separate so that the shard actors (``actors.py``), the tasks (``tasks.py``)
and the driver (``ray_jobs.py``) share it without importing one another.
"""

from __future__ import annotations


class RayUnavailable(RuntimeError):
    """Ray is not installed, or no cluster could be joined."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'matchkit[ray]'") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ("auto": the one this machine
    belongs to; "local" or None: start one in this process) unless joined."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address in (None, "local") else address,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailable(f"cannot join Ray cluster {address!r}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                 ) from None


def _node() -> str:
    return _ray().get_runtime_context().get_node_id()


def peak_rss_kib() -> int:
    """This process's peak resident memory (KiB, Linux ``ru_maxrss``): tasks
    and actors report it, so a run's stats give each node's largest process."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
