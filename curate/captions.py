"""The caption prefilter as phase A runs it before any fetch: text rules, the run's duplicate URLs, language."""
from __future__ import annotations

import pyarrow as pa

from curate.config import LanguageConfig, TextConfig
from curate.inputs.prefetch import PrefetchStage
from curate.language import apply_language
from curate.text import caption_rules


def apply_text_rules(table: pa.Table, cfg: TextConfig) -> pa.Table:
    """caption_clean and caption_rule:<detail> (curate.text), then duplicate_url (curate.inputs.prefetch)."""
    return PrefetchStage.urls(cfg)(caption_rules(table, cfg))


def prefilter(table: pa.Table, text: TextConfig, lang: LanguageConfig) -> pa.Table:
    """The pre-download stages: caption_clean, text rules, duplicate URLs, then language. Row count in = out."""
    n = table.num_rows
    table = apply_language(apply_text_rules(table, text), lang)
    if table.num_rows != n:
        raise RuntimeError(f"prefilter lost rows: {n} in, {table.num_rows} out")
    return table
