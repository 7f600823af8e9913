"""Language identification: accuracy on a labelled multilingual set, bit-exact langdetect, noise, und, determinism."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.captions import prefilter
from curate.config import LanguageConfig, TextConfig
from curate.langid.cleaning import clean_for_detection, iso639_1
from curate.langid.detector import LanguageDetector, get_detector
from curate.langid.langdetect_port import LangdetectEngine
from curate.schema import COL, Status

DATA = Path(__file__).parent / "data" / "captions_multilingual.jsonl"
ROOT = Path(__file__).resolve().parent.parent
LABELLED = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
TEXTS = [d["text"] for d in LABELLED]
GOLD = [d["lang"] for d in LABELLED]

# Measured on this set (deterministic, seed 0): langdetect misses one uk caption (-> ru) and one zh
# caption (-> ko); lingua's low-accuracy mode misses 8 of 238. The floors sit just under those figures.
LANGDETECT_FLOOR = {"uk": 0.9, "zh": 0.9}
LANGDETECT_OVERALL = 0.99
LINGUA_PER_LANG, LINGUA_OVERALL = 0.85, 0.96


@pytest.fixture(scope="module")
def langdetect_det() -> LanguageDetector:
    return get_detector(LanguageConfig(backend="langdetect", seed=0))


def per_language_accuracy(pred: list[str]) -> tuple[dict, float]:
    hit, n = Counter(), Counter()
    for g, p in zip(GOLD, pred):
        n[g] += 1
        hit[g] += g == p
    return {k: hit[k] / n[k] for k in n}, sum(hit.values()) / len(GOLD)


def test_labelled_set_covers_required_languages():
    langs = Counter(GOLD)
    assert len(langs) >= 10 and {"ru", "ja", "zh", "ar"} <= set(langs)
    assert min(langs.values()) >= 10


def test_langdetect_accuracy_per_language(langdetect_det):
    langs, probs = langdetect_det.detect_batch(TEXTS)
    acc, overall = per_language_accuracy(langs)
    for lang, a in acc.items():
        assert a >= LANGDETECT_FLOOR.get(lang, 1.0), (lang, a)
    assert overall >= LANGDETECT_OVERALL
    assert probs.dtype == np.float32 and float(probs.min()) > 0.5


NOISY_FOR_EXACTNESS = ["Café crème brûlée à Paris", "Tôi yêu Việt Nam", "mixed English und Deutsch text hier",
                       "東京 Tokyo タワー tower", "ABC DEF ghi", "NEW YORK City skyline", "Hello", "ok",
                       "http://x.com/a b@c.de hi there", "Ёлка и ёжик", "IMG_1234.jpg", "!!!", ""]


def test_vectorised_engine_is_bit_identical_to_detect_langs(langdetect_det, monkeypatch):
    """Our lockstep numpy engine returns exactly langdetect.detect_langs' list (languages and floats)."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    assert DetectorFactory.seed is not None  # seeded once per process by the first detector
    monkeypatch.setattr(DetectorFactory, "seed", 0)  # compare under the engine's seed whatever ran before
    eng: LangdetectEngine = langdetect_det._engine
    texts = TEXTS + NOISY_FOR_EXACTNESS
    rows = eng.probabilities([eng.features(t) for t in texts])
    for text, row in zip(texts, rows):
        try:
            want = [(x.lang, x.prob) for x in detect_langs(text)]
        except LangDetectException:  # "No features in text"
            assert np.isnan(row).all(), text
            continue
        got = sorted(((p, eng.langs[j]) for j, p in enumerate(row) if p > 0.1), reverse=True)
        assert [(lang, p) for p, lang in got] == want, text


@pytest.mark.parametrize("text", [None, "", "   ", "!!!???", "12345 678", "IMG_1234.jpg", "😀😀🎉",
                                  "https://example.com/photo.jpg", "a@b.com", "ab", "&amp;&nbsp;&#169;",
                                  "<b></b><br/>"])
def test_und_for_empty_short_or_letterless(langdetect_det, text):
    langs, probs = langdetect_det.detect_batch([text])
    assert langs == ["und"] and probs.tolist() == [0.0]


def test_clean_for_detection_strips_web_noise():
    s = ("Check <b>this</b> &amp; that: https://ex.com/a?b=1 www.foo.org mail me@x.org "
         "IMG_1234.jpg 😀🎉 Caf&eacute;!!!!!! ... ok")
    assert clean_for_detection(s) == "Check this & that: mail Café! . ok"
    assert clean_for_detection(None) == ""


@pytest.mark.parametrize("text,lang", [
    ("Beautiful sunset over the ocean 🌅🌊 #travel #nature 😍😍😍", "en"),
    ("Schönes Wetter heute am See!!!!!! 😎 http://bit.ly/abc123 mehr Bilder unter www.example.de", "de"),
    ("Caf&eacute; au lait &amp; croissants sur la table du petit-d&eacute;jeuner", "fr"),
    ("<p>Una casa blanca junto al mar</p> <br/> foto: DSC_0042.JPG", "es"),
    ("Красивый вид на горы и озеро летом — фото IMG_20190101_123456.jpg", "ru"),
    ("渋谷のスクランブル交差点の夜景 https://example.jp", "ja"),
    ("مسجد كبير في وسط المدينة عند غروب الشمس", "ar"),
])
def test_noisy_captions_are_cleaned_then_detected(langdetect_det, text, lang):
    langs, probs = langdetect_det.detect_batch([text])
    assert langs == [lang] and 0.5 < probs[0] <= 1.0


def test_long_and_mixed_captions(langdetect_det):
    long_en = ("A wide panoramic photograph of the old harbour with fishing boats, colourful houses "
               "and seagulls flying above the water. ") * 17
    long_en = long_en[:2000]
    mixed = "Tokyo Tower at night 東京タワーの夜景"
    langs, probs = langdetect_det.detect_batch([long_en, mixed, "Der Eiffelturm in Paris, la tour Eiffel"])
    assert len(long_en) == 2000 and langs[0] == "en"
    assert langs[1] in ("en", "ja") and 0.0 < probs[1] <= 1.0
    assert langs[2] in ("de", "fr") and 0.0 < probs[2] <= 1.0


def test_codes_are_iso_639_1(langdetect_det):
    assert iso639_1("zh-cn") == iso639_1("zh-tw") == iso639_1("ZH_TW") == "zh"
    assert iso639_1("NB") == iso639_1("nn") == "no" and iso639_1(None) == "und"
    langs, _ = langdetect_det.detect_batch(["繁體中文的圖片說明，臺灣的風景", "简体中文的图片说明，北京的风景"])
    assert langs == ["zh", "zh"]
    assert all(len(code) == 2 for code in langdetect_det._engine.codes)


def test_detector_is_loaded_once_per_process_and_caches():
    cfg = LanguageConfig(seed=0)
    det = get_detector(cfg)
    assert get_detector(cfg) is det
    assert get_detector(LanguageConfig(seed=1)) is not det
    a = det.detect_batch(["Ein Hund im Park", "Ein Hund im Park"])
    b = det.detect_batch(["Ein Hund im Park"])
    assert a[0] == ["de", "de"] and b[0] == ["de"] and a[1][0] == b[1][0]


def test_lingua_backend_same_outputs_and_und_rules():
    det = get_detector(LanguageConfig(backend="lingua", lingua_low_accuracy=True))
    langs, probs = det.detect_batch(TEXTS + [None, "IMG_1234.jpg", "!!!", "😀😀"])
    assert langs[-4:] == ["und"] * 4 and probs[-4:].tolist() == [0.0] * 4
    acc, overall = per_language_accuracy(langs[:-4])
    assert overall >= LINGUA_OVERALL and min(acc.values()) >= LINGUA_PER_LANG, acc
    assert probs.dtype == np.float32 and all(len(x) == 2 or x == "und" for x in langs)


_CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
from curate.config import LanguageConfig
from curate.langid.detector import get_detector
from langdetect import detect_langs
texts = json.load(sys.stdin)
langs, probs = get_detector(LanguageConfig(seed=0)).detect_batch(texts)
plain = [str(detect_langs(t)) for t in texts[:20]]  # plain langdetect is seeded by the detector, too
print(json.dumps({{"langs": langs, "probs": probs.tolist(), "plain": plain}}))
"""


def test_deterministic_across_processes(langdetect_det):
    texts = TEXTS[::3] + ["Tokyo Tower 東京タワー", "ok ok", "mixed Deutsch and English words here"]
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(ROOT))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hashseed}) for hashseed in ("1", "2")]
    outs = []
    for p in procs:  # both children run at once; each is a fresh interpreter with its own hash seed
        out, err = p.communicate(json.dumps(texts), timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out))
    assert outs[0] == outs[1]
    langs, probs = langdetect_det.detect_batch(texts)
    assert outs[0]["langs"] == langs and outs[0]["probs"] == probs.tolist()


def test_prefilter_language_rules():
    caps = ["A red car in front of an old house", "Ein rotes Auto vor einem alten Haus",
            "Une voiture rouge devant une vieille maison", "!!! 12345 !!!", None, "Une voiture rouge garée là"]
    urls = [f"http://h/{i}" for i in range(5)] + ["http://h/2"]
    t = pa.table({COL.UID: [str(i) for i in range(6)], COL.URL: urls, COL.CAPTION: caps,
                  COL.STATUS: [Status.OK] * 6})
    text = TextConfig(min_words=0, min_chars=1)
    out = prefilter(t, text, LanguageConfig(languages=("en", "de")))
    assert out.num_rows == 6
    assert out[COL.REASON].to_pylist() == [None, None, "lang", None, "caption_rule:empty", "duplicate_url"]
    assert out[COL.LANG].to_pylist() == ["en", "de", "fr", "und", None, None]
    assert out.schema.field(COL.LANG_PROB).type == pa.float32()
    probs = out[COL.LANG_PROB].to_pylist()
    assert probs[0] > 0.99 and probs[3] == 0.0 and probs[4] is None

    strict = prefilter(t, text, LanguageConfig(languages=("all",), keep_und=False, min_lang_prob=0.5))
    assert strict[COL.REASON].to_pylist()[:4] == [None, None, None, "lang"]
    picky = prefilter(t, text, LanguageConfig(min_lang_prob=1.0))  # nothing is that sure: all detected dropped
    assert picky[COL.REASON].to_pylist()[:4] == ["lang", "lang", "lang", None]
    off = prefilter(t, text, LanguageConfig(enabled=False))
    assert COL.LANG not in off.column_names and off[COL.STATUS].to_pylist()[:4] == [Status.OK] * 4


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend"):
        LanguageDetector(backend="fasttext")


def test_chunked_lockstep_equals_one_batch():
    """Big units are run in chunks; the answer for a text never depends on its batch-mates."""
    one = LanguageDetector(seed=0)
    chunked = LanguageDetector(seed=0)
    chunked.CHUNK = 7
    texts = TEXTS[::5]
    a, b = one.detect_batch(texts), chunked.detect_batch(texts)
    assert a[0] == b[0] and a[1].tolist() == b[1].tolist()
    fresh = LanguageDetector(seed=0)  # one text per call: same answers as inside the batch
    assert [fresh.detect_batch([t])[1][0] for t in texts[:5]] == a[1][:5].tolist()


def test_engine_follows_its_seed(monkeypatch):
    """Another seed gives langdetect's answers for that seed (the stream is the seed's, not a fixed one)."""
    from langdetect import DetectorFactory, detect_langs

    monkeypatch.setattr(DetectorFactory, "seed", 7)
    eng = LangdetectEngine(7)
    texts = TEXTS[::8] + ["mixed English und Deutsch text hier", "Der Eiffelturm in Paris, la tour Eiffel"]
    rows = eng.probabilities([eng.features(t) for t in texts])
    for text, row in zip(texts, rows):
        got = sorted(((p, eng.langs[j]) for j, p in enumerate(row) if p > 0.1), reverse=True)
        assert [(lang, p) for p, lang in got] == [(x.lang, x.prob) for x in detect_langs(text)], text
    eng0 = LangdetectEngine(0)
    assert not np.array_equal(rows, eng0.probabilities([eng0.features(t) for t in texts]))


def test_compact_profiles_equal_langdetects_factory():
    """Every n-gram's row holds the bits of DetectorFactory.word_lang_prob_map[gram], in the factory's language
    order; the engine is only bit-identical to langdetect if this holds."""
    from langdetect import detector_factory

    from curate.langid.langdetect_profiles import load_profiles

    detector_factory.init_factory()
    fac, prof = detector_factory._factory, load_profiles()
    assert prof.langs == fac.langlist and len(prof.langs) == 55
    assert list(prof.index) == list(fac.word_lang_prob_map)  # same grams, same rows (insertion order)
    want = np.array(list(fac.word_lang_prob_map.values()), dtype=np.float64)
    got = np.zeros_like(want)
    got[np.repeat(np.arange(len(got)), np.diff(prof.indptr)), prof.cols] = prof.vals
    assert got.tobytes() == want.tobytes()
    for g in ("a", " t", "th", "the", "東", "ё", "ij "):  # the engine's accessor, on its own
        assert prof.row(g).tolist() == fac.word_lang_prob_map[g], g


_ENGINE_RSS = r"""
import sys
sys.path.insert(0, {root!r})
import langdetect.detector, numpy
from langdetect import detector_factory
from curate.langid.langdetect_port import LangdetectEngine
rss = lambda: int(open("/proc/self/statm").read().split()[1])
before = rss()
LangdetectEngine(0)
print(detector_factory._factory is None, rss() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_engine_does_not_build_langdetects_factory():
    """The engine reads the profiles itself: langdetect's factory would add ~64 MB of RSS to each worker (#14)."""
    out = subprocess.run([sys.executable, "-c", _ENGINE_RSS.format(root=str(ROOT))], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) * os.sysconf("SC_PAGE_SIZE") < 40 * 2**20  # ~20 MB measured; the factory alone is ~64 MB


# --------------------------------------------------------------------------------------------------
# Short captions: the kept languages' evidence (issue 13). Measured with tests/bench/bench_language.py.
from tests.bench import alttext  # noqa: E402

EN = LanguageConfig(languages=("en",))


def _decide(texts, cfg=EN):
    t = pa.table({COL.UID: [str(i) for i in range(len(texts))], COL.URL: [f"http://h/{i}" for i in range(len(texts))],
                  COL.CAPTION: texts, COL.STATUS: [Status.OK] * len(texts)})
    out = prefilter(t, TextConfig(min_words=0, min_chars=1), cfg)
    return out[COL.LANG].to_pylist(), out[COL.REASON].to_pylist()


ISSUE_EXAMPLES = ["just a astronaut", "random spaceman", "blurry galaxy", "Avoid rocket", "style, astronaut, style",
                  "IMG 1234: red car", "stock photo: cat on sofa", "just a rocket", "Nespresso coffee capsules",
                  "Chelsea the cat"]


def test_short_english_captions_are_kept_under_languages_en():
    langs, reasons = _decide(ISSUE_EXAMPLES)
    assert reasons == [None] * len(ISSUE_EXAMPLES), list(zip(ISSUE_EXAMPLES, langs, reasons))
    assert set(langs) <= {"en", "und"}


def test_argmax_decision_is_the_old_behaviour():
    _, reasons = _decide(ISSUE_EXAMPLES, LanguageConfig(languages=("en",), decision="argmax"))
    assert reasons.count("lang") >= 3  # what the issue reported: short English dropped as et, pt, so, sv...


@pytest.mark.parametrize("text", ["Eine rote Katze auf dem Sofa", "Katze auf dem Sofa", "Schwarzer Hund",
                                  "chaton blanc sur le canapé", "perro negro en la calle", "gattino bianco",
                                  "zwarte kat", "svart katt på soffan", "czerwony samochód", "pisică neagră",
                                  "musta kissa", "siyah köpek", "kucing hitam", "Kätzchen"])
def test_short_captions_in_other_languages_are_still_rejected(text):
    _, reasons = _decide([text])
    assert reasons == ["lang"], text


@pytest.mark.parametrize("text,lang", [("猫", "zh"), ("子猫", "zh"), ("ねこ", "ja"), ("고양이", "ko"), ("кот", "ru"),
                                       ("γάτα", "el"), ("قطة", "ar"), ("חתול", "he"), ("แมว", "th"), ("घर", "hi"),
                                       ("Getty Images 猫", "zh"), ("Nikon D750 กล้อง", "th")])
def test_script_decides_even_one_character(text, lang):
    from curate.langrules import SCRIPT_LANGS

    langs, reasons = _decide([text])
    same_script = next(v for v in SCRIPT_LANGS.values() if lang in v)  # кот: ru or mk, either is Cyrillic
    assert reasons == ["lang"] and langs[0] in same_script, (text, langs, reasons)


def test_script_of_a_kept_language_is_kept():
    langs, reasons = _decide(["кот", "Красивый вид на горы"], LanguageConfig(languages=("ru",)))
    assert reasons == [None, None] and langs[1] == "ru"
    langs, reasons = _decide(["Красивый вид на горы"], LanguageConfig(languages=("en", "ja")))
    assert reasons == ["lang"]


def test_too_little_evidence_is_und_and_keep_und_decides():
    text = "Xqzt Vlorb"  # no word of any list, n-grams say little
    langs, reasons = _decide([text], LanguageConfig(languages=("en",), margin=0.99))
    assert langs == ["und"] and reasons == [None]
    _, reasons = _decide([text], LanguageConfig(languages=("en",), margin=0.99, keep_und=False))
    assert reasons == ["lang"]


def test_generated_short_captions_recall_and_rejection():
    """The issue's targets on 1-5 word alt-text captions in every generated language, keeping en, on a seed that
    neither the rules nor the benchmark (seeds 11, 23) used: en recall >= 0.99, others rejected >= 0.97."""
    rows = [c for lang in alttext.LANGS for c in alttext.captions(lang, 200, seed=5)]
    langs, reasons = _decide([r.text for r in rows])
    en = [r is None for r, c in zip(reasons, rows) if c.lang == "en"]
    other = [r == "lang" for r, c in zip(reasons, rows) if c.lang != "en"]
    assert sum(en) / len(en) >= 0.99, sum(en) / len(en)
    assert sum(other) / len(other) >= 0.97, sum(other) / len(other)
    scripted = [r == "lang" for r, c in zip(reasons, rows) if c.lang in ("ru", "uk", "el", "ar", "he", "hi", "zh",
                                                                        "ja", "ko", "th")]
    assert all(scripted)


@pytest.mark.parametrize("text,kept", [("hubble deep field", True), ("chaton blanc", False), ("Getty Images cat", True),
                                       ("chat rouge dans le jardin", False)])
def test_every_language_list_weighs_the_words(text, kept):
    """A word known in k lists gives 1/k to each: hubble (de, pl, sv, cs) loses to deep + field; chaton is French."""
    _, reasons = _decide([text])
    assert (reasons == [None]) == kept, (text, reasons)


def test_word_scores_weigh_by_the_lists_that_know_a_word():
    from curate.langrules import word_index
    from curate.language import word_scores

    index = word_index()
    count, weight = word_scores(["chaton", "NASA cat", "zzqxv"], index)
    fr, en = index.bits["fr"], index.bits["en"]
    assert count[0, fr] == 1 and count[0, en] == 0 and weight[0, fr] > 0
    assert count[1].max() == 1 and count[1, en] == 1  # the acronym carries no language, cat does
    assert weight[1].sum() == pytest.approx(1.0) and count[2].sum() == 0  # one word's weight sums to 1


def test_word_lists_kept_and_none_are_the_earlier_rules():
    _, reasons = _decide(["Nespresso coffee capsules"], LanguageConfig(languages=("en",), word_lists="kept"))
    assert reasons == [None]
    with pytest.raises(ValueError, match="word_lists"):
        from curate.language import check_backend

        check_backend(LanguageConfig(languages=("en",), word_lists="some"))


def test_unknown_decision_is_an_error_at_build():
    from curate.language import check_backend

    with pytest.raises(ValueError, match="decision"):
        check_backend(LanguageConfig(decision="vote"))


# ---- the caption generator the benchmarks share
def test_alttext_lengths_languages_and_determinism():
    import random

    assert {"en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "ro", "cs", "sk", "fi", "et", "tr", "id", "ru", "el",
            "ar", "zh", "ja", "ko", "th"} <= set(alttext.LANGS)
    for lang in alttext.LANGS:
        rows = alttext.captions(lang, 60, seed=5)
        assert rows == alttext.captions(lang, 60, seed=5)
        assert {r.words for r in rows} == {1, 2, 3, 4, 5}
        for r in rows:
            assert r.text.strip() and r.lang == lang and r.subject in alttext.SUBJECTS
            if lang not in alttext.UNSPACED:
                assert len(r.text.split()) == r.words, r
            if lang != "en":
                assert not alttext._all_english(r.text), r
    rng = random.Random(0)
    assert all(1 <= len(alttext.caption("rocket", "en", rng, (1, 3)).split()) <= 3 for _ in range(50))
    with pytest.raises(ValueError, match="language"):
        alttext.caption("cat", "xx", rng)
    with pytest.raises(ValueError, match="subject"):
        alttext.caption("unicorn", "en", rng)
