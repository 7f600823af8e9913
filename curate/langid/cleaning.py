"""Prepares captions for language ID: web noise removed, letters counted, backend codes as ISO 639-1."""
from __future__ import annotations

import html
import re

from curate.text import IMAGE_EXTENSIONS

UND = "und"

# Cleaning before detection: web noise carries no language signal but does move langdetect's n-grams.
_URL = r"(?:(?:https?|ftp)://|www\.)\S+"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_TAG = r"<[^<>]{0,500}>"
_FILENAME = rf"[\w\-.()]*\w\.(?:{'|'.join(IMAGE_EXTENSIONS)})\b"
_EMOJI = ("[\U0001F000-\U0001FAFF\U0001FB00-\U0001FBFF\u2190-\u21FF\u2300-\u23FF\u2460-\u27BF"
          "\u2900-\u297F\u2B00-\u2BFF\u3030\u303D\u3297\u3299\uFE0E\uFE0F\u200D\u20E3"
          "\U000E0020-\U000E007F]+")
# One pass for all the noise (an alternation is tried left to right at each position: a tag wins over the
# URL inside it); entities are decoded before, so only unknown ones are left for _ENTITY.
_NOISE = re.compile("|".join((_TAG, _URL, _EMAIL, _FILENAME, _EMOJI)), re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#\d{1,7}|#x[0-9a-f]{1,6}|[a-z][a-z0-9]{1,31});?", re.IGNORECASE)
_REPEAT_PUNCT = re.compile(r"([^\w\s])\1+")
_WS = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")


def clean_for_detection(text: str | None) -> str:
    """Text with URLs, e-mails, HTML tags/entities, image file names, emoji and repeated punctuation removed.

    Entities are decoded first (&eacute; is a letter, &lt;b&gt; a tag), then tags and what is left of them go.
    """
    if not text:
        return ""
    s = text
    if "&" in s:
        s = _ENTITY.sub(" ", html.unescape(s))
    s = _NOISE.sub(" ", s)
    s = _REPEAT_PUNCT.sub(r"\1", s)
    return _WS.sub(" ", s).strip()


def letter_count(text: str) -> int:
    """Letters in `text` (word characters that are neither digits nor '_')."""
    return len(_LETTER.findall(text))


def iso639_1(code: str | None) -> str:
    """Normalises a backend's language code to ISO 639-1: zh-cn/zh-tw -> zh, nb/nn -> no, '' -> und."""
    if not code:
        return UND
    code = code.lower().replace("_", "-")
    base = code.split("-", 1)[0]
    return {"nb": "no", "nn": "no"}.get(base, base)
