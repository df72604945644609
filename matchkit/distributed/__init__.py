"""The same pipeline on a Ray cluster (``pip install 'matchkit[ray]'``):
shard actors, extraction and verification tasks (:mod:`.ray_jobs`)."""

from matchkit.util.moved import forward as _forward

__getattr__ = _forward("matchkit.distributed", "matchkit.distributed.ray_jobs")
