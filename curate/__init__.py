"""curate: build CLIP image-text training sets (filter, download, dedup, score, balance, shard) and train on them."""
