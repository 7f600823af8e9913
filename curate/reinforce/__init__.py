"""Reinforced shards (issue 17): seeded image views, per-sample teacher embeddings, and their KEY.npz format."""
from curate.reinforce.store import read_npz, write_npz
from curate.reinforce.views import apply_view, view_params

__all__ = ["view_params", "apply_view", "read_npz", "write_npz"]
