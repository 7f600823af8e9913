"""Image deduplication: perceptual hashes per unit (phase A) and global exact/near-duplicate clustering (phase B)."""
from curate.dedup.hashing import add_hashes, hash_images, phash_pixels, dhash_pixels, trim_borders

__all__ = ["add_hashes", "hash_images", "phash_pixels", "dhash_pixels", "trim_borders", "find_duplicates",
           "hash_columns", "low_detail", "near_pairs", "load_eval_hashes", "SearchStats"]
_CLUSTER = frozenset(__all__[5:])


def __getattr__(name: str):
    # lazy: the download workers hash (phase A) but never cluster; cluster imports numba (~50 MB per process)
    if name in _CLUSTER:
        from curate.dedup import cluster
        return getattr(cluster, name)
    raise AttributeError(f"module 'curate.dedup' has no attribute {name!r}")
