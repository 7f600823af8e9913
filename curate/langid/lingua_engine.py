"""lingua-language-detector over the languages langdetect also knows, as a second backend."""
from __future__ import annotations

import numpy as np

from curate.langid.cleaning import UND, iso639_1

# lingua. Measured on the labelled set (tests/data): all 75 languages' high-accuracy models take ~1.3 GB and
# ~590 captions/CPU-s; the 52 that langdetect also knows (its 55 less kn, ml, ne; Norwegian as nb + nn) take
# ~0.9 GB and ~1,100 captions/CPU-s with the same accuracy (99.6%), so we load those: both backends then
# answer from the same language set. Low-accuracy mode (trigrams only): ~0.1 GB, ~3,500/CPU-s, 96.6%.
LINGUA_CODES = ("af", "ar", "bg", "bn", "ca", "cs", "cy", "da", "de", "el", "en", "es", "et", "fa", "fi", "fr",
                "gu", "he", "hi", "hr", "hu", "id", "it", "ja", "ko", "lt", "lv", "mk", "mr", "nb", "nl", "nn",
                "pa", "pl", "pt", "ro", "ru", "sk", "sl", "so", "sq", "sv", "sw", "ta", "te", "th", "tl", "tr",
                "uk", "ur", "vi", "zh")


class LinguaEngine:
    """lingua-language-detector over the languages langdetect also knows."""

    def __init__(self, low_accuracy: bool = False):
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*[getattr(IsoCode639_1, c.upper())
                                                                 for c in LINGUA_CODES])
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        self._det = builder.build()

    def detect(self, texts: list[str], codes: list[str]) -> tuple[list[str], list[float], list[np.ndarray | None]]:
        """Top language, its confidence and all confidences over `codes` per text ('und', 0.0, None when lingua
        has no answer)."""
        index = {c: j for j, c in enumerate(codes)}
        langs, probs, vecs = [], [], []
        for values in self._det.compute_language_confidence_values_in_parallel(texts):
            if not values or values[0].value <= 0.0:
                langs.append(UND)
                probs.append(0.0)
                vecs.append(None)
                continue
            langs.append(iso639_1(values[0].language.iso_code_639_1.name))
            probs.append(float(values[0].value))
            vec = np.zeros(len(codes), dtype=np.float32)
            for v in values:  # nb and nn both count as no
                vec[index[iso639_1(v.language.iso_code_639_1.name)]] += v.value
            vecs.append(vec)
        return langs, probs, vecs
