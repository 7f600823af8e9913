"""Text rules before download: Unicode cleaning, every caption_rule detail, duplicate URLs, nothing lost."""
from __future__ import annotations

import pyarrow as pa
import pytest

from curate.captions import apply_text_rules, prefilter
from curate.config import ConfigError, LanguageConfig, TextConfig, load_config
from curate.inputs.prefetch import first_occurrence_duplicates
from curate.schema import COL, Status
from curate.text import clean_captions, compile_blocklist, word_counts

NO_LANG = LanguageConfig(enabled=False)


def ledger(captions, urls=None, status=None, **extra) -> pa.Table:
    n = len(captions)
    cols = {COL.UID: [f"u{i}" for i in range(n)],
            COL.URL: urls if urls is not None else [f"http://h/{i}.jpg" for i in range(n)],
            COL.CAPTION: pa.array(captions, pa.string()),
            COL.STATUS: status or [Status.OK] * n}
    cols.update(extra)
    return pa.table(cols)


def test_clean_captions_nfc_controls_whitespace():
    raw = ["Cafe\u0301 au lait", "tab\there\nnew\r\nline", "bell\x07null\x00gone", "  many    spaces  ",
           None, "\x1b[31mred\x1b[0m", "keep\u00a0nbsp and émoji 😀"]
    got = clean_captions(pa.array(raw)).to_pylist()
    assert got[0] == "Caf\u00e9 au lait" and len(got[0]) == 12  # composed, one code point
    assert got[1] == "tab here new line"
    assert got[2] == "bellnullgone"
    assert got[3] == "many spaces"
    assert got[4] is None
    assert got[5] == "[31mred[0m"  # ESC removed, the printable rest kept
    assert got[6] == "keep\u00a0nbsp and émoji 😀"


def test_word_counts_count_cjk_characters():
    got = word_counts(clean_captions(pa.array(["a red car", "赤い車", "東京 tower", "", None]))).tolist()
    assert got == [3, 3, 3, 0, 0]


@pytest.mark.parametrize("caption,detail", [
    (None, "empty"),
    ("", "empty"),
    ("  \x00\t ", "empty"),
    ("https://example.com/a/b.jpg?x=1", "only_url"),
    ("www.example.com/page", "only_url"),
    ("IMG_1234.jpg", "only_filename"),
    ("DSC01234.JPG", "only_filename"),
    ("photo (2).png", "only_filename"),
    ("hi", "too_short"),
    ("x" * 30, "too_long"),
    ("onlyoneword", "too_few_words"),
    ("a b c d e f g", "too_many_words"),
    ("a lovely NSFW pic", "blocklist"),
    ("buy now at shop123", "blocklist"),
    ("a red car", None),
])
def test_each_rule_sets_its_reason(caption, detail):
    cfg = TextConfig(min_chars=3, max_chars=25, min_words=2, max_words=6, blocklist=("nsfw", r"shop\d+"))
    out = apply_text_rules(ledger([caption]), cfg)
    if detail is None:
        assert out[COL.STATUS].to_pylist() == [Status.OK]
        assert out[COL.REASON].to_pylist() == [None]
    else:
        assert out[COL.STATUS].to_pylist() == [Status.CAPTION_RULE]
        assert out[COL.REASON].to_pylist() == [f"caption_rule:{detail}"]


def test_rules_can_be_switched_off():
    cfg = TextConfig(drop_empty=False, drop_only_filename=False, drop_only_url=False, min_chars=0, min_words=0)
    out = apply_text_rules(ledger([None, "IMG_1.jpg", "http://a.b/c"]), cfg)
    assert out[COL.STATUS].to_pylist() == [Status.OK] * 3
    out = apply_text_rules(ledger([None, "IMG_1.jpg"]), TextConfig(enabled=False))
    assert out[COL.STATUS].to_pylist() == [Status.OK] * 2
    assert out[COL.CAPTION_CLEAN].to_pylist() == [None, "IMG_1.jpg"]  # still cleaned for the .txt


def test_blocklist_words_match_whole_words_only():
    pat = compile_blocklist(("ass",))
    assert pat.search("kick ASS photo") and not pat.search("a glass of water")
    assert compile_blocklist(()) is None


def test_duplicate_urls_within_table_keep_first():
    urls = ["http://a/1", "http://a/2", "http://a/1", None, None, "http://a/1"]
    assert first_occurrence_duplicates(pa.chunked_array([urls])).tolist() == [False, False, True, False, False, True]
    out = apply_text_rules(ledger(["a red car"] * 6, urls=urls), TextConfig())
    assert out[COL.REASON].to_pylist() == [None, None, "duplicate_url", None, None, "duplicate_url"]
    off = apply_text_rules(ledger(["a red car"] * 6, urls=urls), TextConfig(dedup_urls=False))
    assert off[COL.STATUS].to_pylist() == [Status.OK] * 6


def test_planner_dup_column_wins_over_local_dedup():
    # The planner saw the whole run: row 0 repeats a URL from an earlier unit; rows 1/2 repeat each other
    # here but the planner says row 2 is the first of its URL in the run (e.g. after a sorted plan).
    t = ledger(["a red car"] * 3, urls=["http://a/1", "http://a/2", "http://a/2"],
               **{COL.DUP_URL: [True, False, None]})
    out = apply_text_rules(t, TextConfig())
    assert out[COL.REASON].to_pylist() == ["duplicate_url", None, None]


def test_text_rule_comes_before_duplicate_and_earlier_drops_are_kept():
    t = ledger(["", "a red car", "a red car"], urls=["http://a/1", "http://a/1", "bad"],
               status=[Status.OK, Status.OK, Status.INVALID_URL])
    t = t.append_column(COL.REASON, pa.array([None, None, "invalid_url"], pa.string()))
    out = prefilter(t, TextConfig(), NO_LANG)
    assert out[COL.REASON].to_pylist() == ["caption_rule:empty", "duplicate_url", "invalid_url"]


def test_prefilter_keeps_every_row_and_the_original_caption():
    caps = ["Caf\u00e9\u0301?", None, "IMG_1.jpg", "A\x00 red  car", "x", "a red car"] * 50
    t = ledger(caps)
    out = prefilter(t, TextConfig(min_chars=2), NO_LANG)
    assert out.num_rows == t.num_rows
    assert out[COL.CAPTION].to_pylist() == caps
    assert out[COL.CAPTION_CLEAN].to_pylist()[3] == "A red car"
    counts = {}
    for r in out[COL.REASON].to_pylist():
        counts[r] = counts.get(r, 0) + 1
    assert sum(counts.values()) == len(caps)
    assert counts["caption_rule:empty"] == 50 and counts["caption_rule:only_filename"] == 50


def test_language_config_is_checked(tmp_path):
    cfg = load_config(overrides={"language.languages": "[en, de]", "language.min_letters": "4",
                                 "language.backend": "lingua"})
    assert cfg.language.languages == ("en", "de") and cfg.language.min_letters == 4
    with pytest.raises(ConfigError, match=r"language.languages\[1\]"):
        load_config(overrides={"language.languages": "[en, English]"})
    with pytest.raises(ConfigError, match="language.min_lang_prob"):
        load_config(overrides={"language.min_lang_prob": "1.5"})
    with pytest.raises(ConfigError, match="language.backend"):
        load_config(overrides={"language.backend": "fasttext"})


def test_empty_table_and_all_null_caption_column():
    empty = pa.table({COL.UID: pa.array([], pa.string()), COL.URL: pa.array([], pa.string()),
                      COL.CAPTION: pa.array([], pa.string()), COL.STATUS: pa.array([], pa.string())})
    assert prefilter(empty, TextConfig(), LanguageConfig()).num_rows == 0
    nulls = pa.table({COL.UID: ["a", "b"], COL.URL: ["http://h/a", "http://h/b"], COL.CAPTION: pa.nulls(2),
                      COL.STATUS: [Status.OK] * 2})  # a CSV column with no values reads as type null
    out = prefilter(nulls, TextConfig(), LanguageConfig())
    assert out[COL.REASON].to_pylist() == ["caption_rule:empty"] * 2
    assert out.schema.field(COL.CAPTION_CLEAN).type == pa.string()
