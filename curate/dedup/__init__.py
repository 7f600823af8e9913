"""Image deduplication: perceptual hashes per unit (phase A) and global exact/near-duplicate clustering (phase B)."""
from curate.dedup.hashing import add_hashes, hash_images, phash_pixels, dhash_pixels, trim_borders
from curate.dedup.cluster import (find_duplicates, hash_columns, low_detail, near_pairs, load_eval_hashes,
                                  SearchStats)

__all__ = ["add_hashes", "hash_images", "phash_pixels", "dhash_pixels", "trim_borders", "find_duplicates",
           "hash_columns", "low_detail", "near_pairs", "load_eval_hashes", "SearchStats"]
