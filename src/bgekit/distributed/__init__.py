"""Past one machine: encoding on a Ray cluster into resumable Parquet shards, and reading
them back (for ``bgekit index build --from-encoded`` and bulk loads into Milvus / Qdrant).

Ray is an optional extra (``pip install 'bgekit[ray]'``) and is imported only when a
distributed encode starts; ``import bgekit`` never imports this package.
"""

from bgekit.distributed.ray_encode import RayEncodeConfig, RayEncodeReport, ShardEncoder, encode_on_ray
from bgekit.distributed.shards import EncodedShards, ShardHeader, read_shards

__all__ = [
    "EncodedShards",
    "RayEncodeConfig",
    "RayEncodeReport",
    "ShardEncoder",
    "ShardHeader",
    "encode_on_ray",
    "read_shards",
]
