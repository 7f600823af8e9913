"""Phase B selection: dedup drops, CLIP filter, concept and language balancing, shard assignment."""
from curate.select.selection import assign_shards, key_widths, select, shard_mix

__all__ = ["select", "assign_shards", "key_widths", "shard_mix"]
