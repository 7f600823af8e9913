"""One strict, frozen config object per run: nested dataclasses loaded from YAML, overridable from the CLI."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class InputConfig:
    paths: tuple[str, ...] = ()          # files, folders or globs of URL lists
    preset: str = "default"              # laion | coyo | datacomp | default (url, caption)
    file_format: str = "auto"            # auto (by extension) | parquet | csv | tsv | jsonl | txt
    url_col: str | None = None           # overrides the preset's URL column
    caption_col: str | None = None       # overrides the preset's caption column
    keep_columns: tuple[str, ...] = ()   # input columns carried to the ledger as src_<name>
    unit_size: int = 10_000              # rows per work unit
    max_caption_bytes: int = 65_536      # UTF-8 bytes; a longer caption is cut while reading -> caption_rule:too_long


@dataclass(frozen=True)
class TextConfig:
    enabled: bool = True                 # apply the text rules below
    min_chars: int = 1                   # characters of the cleaned caption
    max_chars: int = 2_000               # longer captions -> caption_rule:too_long
    min_words: int = 1                   # words of the cleaned caption
    max_words: int = 500                 # more words -> caption_rule:too_many_words
    drop_empty: bool = True              # empty or missing captions -> caption_rule:empty
    drop_only_filename: bool = True      # captions that are only "IMG_1234.jpg"
    drop_only_url: bool = True           # captions that are only a URL
    dedup_urls: bool = True              # keep the first row of each URL, later ones -> duplicate_url
    blocklist: tuple[str, ...] = ()      # words or regexes (re.IGNORECASE)


@dataclass(frozen=True)
class LanguageConfig:
    enabled: bool = True                 # detect caption languages (and filter by `languages`)
    backend: str = "langdetect"          # langdetect | lingua
    languages: tuple[str, ...] = ("all",)  # ISO 639-1 codes to keep, or all
    min_lang_prob: float = 0.0           # 0..1: rows whose detected language is below are dropped as lang
    keep_und: bool = True                # keep captions whose language is undetermined
    seed: int = 0                        # langdetect's DetectorFactory.seed
    min_letters: int = 3                 # letters (after URL/emoji/file-name cleaning) needed, else lang = und
    lingua_low_accuracy: bool = False    # lingua trigram-only mode: ~9x less memory, ~3x faster, less accurate
    decision: str = "evidence"           # with a language set: evidence (script, word lists, margin) | argmax
    margin: float = 0.0                  # evidence: drop only if P(best other) - P(best kept) exceeds this
    word_lists: str = "all"              # evidence: all (every language's list weighs the words) | kept | none
    tie_keep_prob: float = 0.5           # all: on equal word coverage, keep when P(best kept) reaches this
    min_known_share: float = 0.75        # kept: keep when this share of words is in a kept word list
    word_index_dir: str = ""             # all: cache of the hashed word lists ('' = ~/.cache/curate); built once


@dataclass(frozen=True)
class OptOutConfig:
    robots_txt: bool = True              # fetch /robots.txt once per origin per run; Disallow for our agents -> robots:robots_txt (4xx = allow, 5xx/timeout = disallow all, RFC 9309)
    tdmrep: bool = True                  # fetch /.well-known/tdmrep.json once per origin per run; a TDM reservation -> robots:tdmrep
    headers: bool = True                 # response headers: tdm-reservation/tdm-policy -> robots:tdm_header, Content-Usage train-ai=n -> robots:content_usage
    embedded: bool = True                # metadata in the image bytes: C2PA training-mining notAllowed -> robots:c2pa, IPTC/XMP plus:DataMining prohibited -> robots:iptc
    agents: tuple[str, ...] = ("CCBot",)  # robots.txt user-agent tokens honoured besides the token of download.user_agent
    accepted_tdm_policies: tuple[str, ...] = ()  # tdm-policy URLs whose terms the user accepts: a reservation with one of them is not an opt-out
    policy_timeout: float = 5.0          # seconds for one robots.txt / tdmrep.json fetch, redirects included
    policy_max_bytes: int = 512_000      # bytes of a policy file read (RFC 9309: parse at least 500 KiB)


@dataclass(frozen=True)
class DownloadConfig:
    threads: int = 32                    # requests in flight per worker process
    timeout: float = 10.0                # seconds per connect / read
    deadline: float = 30.0               # seconds for a whole request, body included
    retries: int = 2                     # extra attempts on connection errors, 429 and 5xx
    backoff: float = 0.5                 # seconds; doubled each retry, with jitter
    max_redirects: int = 5               # each hop is checked by the SSRF guard again
    max_bytes: int = 20_000_000          # response body cap
    user_agent: str = "curate/0.1 (+https://github.com/curate-project/curate)"  # sent with every request
    per_domain_concurrency: int = 16     # requests in flight per host per worker
    per_domain_rps: float = 0.0          # requests per second per host per worker; 0 = unlimited
    allow_private_networks: bool = False  # lift the SSRF guard (tests, the demo)
    robots_disallow: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")  # X-Robots-Tag opt-outs -> robots
    retry_failed: bool = False           # rerun: refetch retryable failures in completed units
    optout: OptOutConfig = field(default_factory=OptOutConfig)  # machine-readable opt-outs honoured per row (evidence in the ledger's optout_signals)


@dataclass(frozen=True)
class ImageConfig:
    size: int = 256                      # target size in pixels
    resize_mode: str = "keep_ratio"      # no | keep_ratio | keep_ratio_largest | center_crop | border
    resize_only_if_bigger: bool = False  # never upscale small images
    min_width: int = 0                   # pixels; smaller -> too_small
    min_height: int = 0                  # pixels; smaller -> too_small
    max_aspect_ratio: float = 0.0        # 0 = no limit
    max_pixels: int = 100_000_000        # decompression-bomb cap, decided from the header
    max_decoded_bytes: int = 300_000_000  # decoded-raster cap from the header: width x height x bytes per pixel of the mode (L 1, RGB 3, RGBA/CMYK/float 4); an RGB image at max_pixels passes; larger -> decode_error:too_large_decoded
    format: str = "jpg"                  # jpg | png | webp
    quality: int = 95                    # jpg/webp encode quality
    skip_reencode: bool = True           # keep the original bytes when they already fit (metadata and trailing bytes stripped losslessly)
    keep_metadata: tuple[str, ...] = ()  # metadata stored with the image: icc (a valid RGB ICC profile) | exif (without orientation); none by default
    decode_threads: int = 2              # threads that decode/resize/encode per download stage call (bounds memory)


@dataclass(frozen=True)
class DedupConfig:
    enabled: bool = True                 # hash images and drop exact and near duplicates
    hash: str = "phash"                  # phash | dhash
    k: int = 8                           # Hamming distance for near-duplicates (pHash distances are even; see curate/dedup)
    low_detail_bits: int = 12            # dHash 0/1 bit imbalance that makes an image low-detail (33: off)
    low_detail_k: int = 8                # a low-detail pair also needs the second hash within this
    second_k: int = 4                    # second search: pairs within this on the second hash (-1: off) ...
    loose_k: int = 16                    # ... count when the first hash is within this (crops that move pHash)
    colour_check: bool = True            # a near pair also needs like colours (rgb_grid): no cell's chromaticity ...
    colour_chroma: float = 0.15          # ... further apart than this (r, g, b over the cell's mean; grey images: no check)
    plain_detail: float = 0.5            # plain images (ledger detail below this; 0: off) hash as noise: they match by colour ...
    plain_tol: float = 1.5               # ... rgb_grids over their mean brightness (x128) within this, mean per value
    trim_borders: bool = True            # trim uniform borders before hashing
    exact_sha256: bool = True            # identical bytes are duplicates whatever their URL
    max_bucket: int = 5_000              # hashes of one search bucket that take part in comparisons (bounds giant buckets)
    spread_min: int = 1_000_000          # images from which a multi-node cluster runs the pair search as a Ray Data job
    eval_hashes: str | None = None       # Parquet or text file of evaluation-image hashes -> eval_overlap
    prefetch: bool = True                # drop repeated precomputed input hashes before download
    fast_hash: bool = True               # JPEG draft decode + matrix LANCZOS: ~4x faster from stored bytes, pHash ~1 bit off imagehash (false: bit-exact)
    semantic: bool = False               # semantic dedup on the stored CLIP image embeddings (needs clip.save_embeddings; curate/dedup/semantic.py)
    semantic_eps: float = 0.05           # cosine distance within which a row is a semantic duplicate of its representative
    semantic_clusters: int = 0           # k-means clusters that bound the comparisons (0: about sqrt(images))


@dataclass(frozen=True)
class ClipConfig:
    enabled: bool = True                 # score every image-caption pair
    model: str = "ViT-B-32"              # open_clip name or a model config JSON path
    pretrained: str = ""                 # open_clip tag, weights file or curate.train checkpoint dir
    batch_size: int = 256                # images per model forward
    device: str = "auto"                 # auto | cpu | cuda
    precision: str = "auto"              # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    save_embeddings: bool = False        # float16 image/text embeddings beside the unit ledger
    threshold: float | None = None       # absolute cosine threshold (LAION: 0.28 for ViT-B/32)
    keep_top_fraction: float | None = None  # or keep this top fraction over the run (DataComp: 0.3)
    num_actors: int = 0                  # 0 = one per GPU, or one per core (up to 8) on a CPU-only cluster
    cpu_in_units: bool = True            # no GPU in the cluster: score (and reinforce) in the download tasks, no 2nd pass
    draft_decode: bool = True            # JPEGs >= 2x the model's input size decode at a reduced scale (faster)


@dataclass(frozen=True)
class ReinforceConfig:
    enabled: bool = False                # store teacher embeddings of seeded image views and captions (KEY.npz)
    teachers: tuple[str, ...] = ()       # "<model>|<pretrained>" each (as clip.model|clip.pretrained): an ensemble
    views: int = 2                       # augmented views per image (RandomResizedCrop + flip, seeded by uid)
    min_scale: float = 0.35              # lower bound of the crops' area fraction (RandomResizedCrop scale)
    batch_size: int = 64                 # images per teacher forward


@dataclass(frozen=True)
class BalanceConfig:
    concepts: bool = False               # MetaCLIP concept balancing
    vocabulary: str = "imagenet"         # imagenet (open_clip's class names) or a file, one entry a line
    t: int = 20_000                      # per-entry cap
    unmatched: str = "keep"              # keep | drop | cap
    lang_caps: dict = field(default_factory=dict)    # {lang: max rows}
    lang_shares: dict = field(default_factory=dict)  # {lang: share of the kept set, 0..1}
    case_sensitive: bool = False         # concept matching: False lowercases captions and entries


@dataclass(frozen=True)
class ShardConfig:
    samples_per_shard: int = 10_000      # every shard has exactly this many (the last may be short)
    shuffle: bool = True                 # seeded shuffle across shards


@dataclass(frozen=True)
class RunConfig:
    output: str = ""                     # local path or s3://bucket/prefix
    seed: int = 0                        # seed of every random choice (shuffles, balancing draws)
    overwrite: bool = False              # delete the output and start over (otherwise: resume)
    ray_address: str | None = None       # None: RAY_ADDRESS or `ray job submit`, else local Ray
    num_cpus: int | None = None          # local Ray size; None = all cores
    max_units_in_flight: int = 0         # 0 = 2 per CPU: bounds phase-A memory
    progress: bool = True                # progress bar on a terminal, periodic log lines otherwise
    input: InputConfig = field(default_factory=InputConfig)
    text: TextConfig = field(default_factory=TextConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)


def _coerce(value, typ, path: str):
    """Checks/converts a YAML value to the dataclass field type; errors name the key."""
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(typ, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(typ)[:1]
        return tuple(_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            out = typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected {typ.__name__}, got {value!r}") from None
        if typ is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return out
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict, path: str = ""):
    """Builds dataclass `cls` from a mapping; an unknown key is an error that names it."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or "config"
        raise ConfigError(f"unknown key {unknown[0]!r} in {where} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain-data form of a config (lists for tuples), for YAML/JSON output."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_config(path: str | None = None, overrides: dict | None = None, cls=RunConfig):
    """Loads YAML `path` (optional), applies dotted `overrides` ({'download.timeout': 5}), validates.

    String override values are parsed as YAML scalars, so '5' -> 5 and '[en, de]' -> list.
    """
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
    for k, v in (overrides or {}).items():
        if isinstance(v, str):
            try:
                v = yaml.safe_load(v) if v != "" else v
            except yaml.YAMLError:
                pass
        _set_dotted(data, k, v)
    cfg = from_dict(cls, data)
    check(cfg)
    return cfg


def check(cfg: RunConfig) -> None:
    """Cross-field checks with messages that name the key."""
    choices = {
        "input.preset": (cfg.input.preset, ("laion", "coyo", "datacomp", "default")),
        "input.file_format": (cfg.input.file_format, ("auto", "parquet", "csv", "tsv", "jsonl", "txt")),
        "language.backend": (cfg.language.backend, ("langdetect", "lingua")),
        "image.resize_mode": (cfg.image.resize_mode, ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")),
        "image.format": (cfg.image.format, ("jpg", "png", "webp")),
        "dedup.hash": (cfg.dedup.hash, ("phash", "dhash")),
        "clip.device": (cfg.clip.device, ("auto", "cpu", "cuda")),
        "clip.precision": (cfg.clip.precision, ("auto", "fp32", "bf16", "fp16")),
        "balance.unmatched": (cfg.balance.unmatched, ("keep", "drop", "cap")),
    }
    for key, (val, allowed) in choices.items():
        if val not in allowed:
            raise ConfigError(f"{key}: {val!r} is not one of {', '.join(allowed)}")
    positive = {"input.unit_size": cfg.input.unit_size, "input.max_caption_bytes": cfg.input.max_caption_bytes,
                "download.threads": cfg.download.threads,
                "image.size": cfg.image.size, "clip.batch_size": cfg.clip.batch_size,
                "image.decode_threads": cfg.image.decode_threads, "image.max_decoded_bytes": cfg.image.max_decoded_bytes,
                "download.per_domain_concurrency": cfg.download.per_domain_concurrency,
                "shards.samples_per_shard": cfg.shards.samples_per_shard}
    for key, val in positive.items():
        if val <= 0:
            raise ConfigError(f"{key}: must be > 0, got {val}")
    if not 0 <= cfg.dedup.k < 32:
        raise ConfigError(f"dedup.k: must be in [0, 31] (Hamming distance between 64-bit hashes), got {cfg.dedup.k}")
    if cfg.dedup.spread_min <= 0:
        raise ConfigError(f"dedup.spread_min: must be > 0, got {cfg.dedup.spread_min}")
    if not 0 <= cfg.dedup.low_detail_bits <= 33:
        raise ConfigError(f"dedup.low_detail_bits: must be in [0, 33] (33 turns the rule off), "
                          f"got {cfg.dedup.low_detail_bits}")
    for key in ("low_detail_k", "second_k", "loose_k"):
        if not (-1 if key == "second_k" else 0) <= getattr(cfg.dedup, key) < 32:
            raise ConfigError(f"dedup.{key}: must be in [{-1 if key == 'second_k' else 0}, 31], "
                              f"got {getattr(cfg.dedup, key)}")
    if not cfg.dedup.colour_chroma > 0:
        raise ConfigError(f"dedup.colour_chroma: must be > 0 (dedup.colour_check: false turns the check off), "
                          f"got {cfg.dedup.colour_chroma}")
    if cfg.dedup.plain_detail < 0 or not cfg.dedup.plain_tol > 0:
        raise ConfigError(f"dedup.plain_detail: must be >= 0 (0: off) and dedup.plain_tol > 0, got "
                          f"{cfg.dedup.plain_detail} and {cfg.dedup.plain_tol}")
    if cfg.dedup.max_bucket <= 0:
        raise ConfigError(f"dedup.max_bucket: must be > 0, got {cfg.dedup.max_bucket}")
    _check_semantic(cfg)
    f = cfg.clip.keep_top_fraction
    if f is not None and not 0 < f <= 1:
        raise ConfigError(f"clip.keep_top_fraction: must be in (0, 1], got {f}")
    for i, kind in enumerate(cfg.image.keep_metadata):
        if kind not in ("icc", "exif"):
            raise ConfigError(f"image.keep_metadata[{i}]: {kind!r} is not one of icc, exif")
    _check_language(cfg.language)
    _check_reinforce(cfg.reinforce, cfg.seed)


def _check_reinforce(r: ReinforceConfig, seed: int) -> None:
    """Teachers are '<model>|<pretrained>'; views, scale and batch are in range (checked only when enabled)."""
    if not r.enabled:
        return
    if not r.teachers:
        raise ConfigError("reinforce.teachers: reinforce is enabled but names no teacher ('<model>|<pretrained>')")
    from curate.reinforce.identity import parse_teacher  # the one parser of an entry (it imports this module)
    for i, t in enumerate(r.teachers):
        try:
            parse_teacher(t)
        except ValueError as e:
            raise ConfigError(f"reinforce.teachers[{i}]: {e}") from None
    if r.views < 1 or r.batch_size < 1:
        raise ConfigError(f"reinforce.views and reinforce.batch_size: must be >= 1, got {r.views}, {r.batch_size}")
    if not 0 < r.min_scale <= 1:
        raise ConfigError(f"reinforce.min_scale: must be in (0, 1], got {r.min_scale}")
    if seed < 0:
        raise ConfigError(f"seed: must be >= 0 with reinforce on (it seeds the views), got {seed}")


def _check_semantic(cfg: RunConfig) -> None:
    """dedup.semantic reads the image embeddings the scoring pass stores: it needs them asked for, not turned on
    behind the user's back (storing them moves scoring out of the download tasks and costs disk)."""
    d = cfg.dedup
    if not 0 <= d.semantic_eps < 2:
        raise ConfigError(f"dedup.semantic_eps: must be in [0, 2) (a cosine distance), got {d.semantic_eps}")
    if d.semantic_clusters < 0:
        raise ConfigError(f"dedup.semantic_clusters: must be >= 0 (0: about sqrt(images)), got {d.semantic_clusters}")
    if d.semantic and not d.enabled:
        raise ConfigError("dedup.semantic: needs dedup.enabled (it runs after pHash dedup, in phase B)")
    if d.semantic and not (cfg.clip.enabled and cfg.clip.save_embeddings):
        raise ConfigError("dedup.semantic: needs clip.enabled and clip.save_embeddings: true (it reads the stored "
                          "image embeddings, stage/<unit>.emb.parquet)")


def _check_language(lang: LanguageConfig) -> None:
    """language.languages are 'all' or lower-case ISO 639-1 codes; min_lang_prob is a probability."""
    import re
    for i, code in enumerate(lang.languages):
        if code != "all" and not re.fullmatch(r"[a-z]{2}", code):
            raise ConfigError(f"language.languages[{i}]: {code!r} is not 'all' or an ISO 639-1 code like 'en'")
    if not 0.0 <= lang.min_lang_prob <= 1.0:
        raise ConfigError(f"language.min_lang_prob: must be in [0, 1], got {lang.min_lang_prob}")
    if lang.min_letters < 0:
        raise ConfigError(f"language.min_letters: must be >= 0, got {lang.min_letters}")


def dump_yaml(cfg) -> str:
    """The resolved config as YAML (saved beside the run's output)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg) -> str:
    """A short stable hash of the resolved config (for manifest and resume checks)."""
    import hashlib
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _field_comments(cls) -> dict[str, str]:
    """The trailing `# comment` of each field line in the dataclass source: the option's documentation."""
    import inspect
    import re
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def documented_yaml(cls=RunConfig, indent: int = 0) -> str:
    """Every option of `cls` with its default and its documentation, as commented YAML."""
    lines = []
    pad = " " * indent
    docs = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        val = getattr(default, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{pad}{f.name}:")
            lines.append(documented_yaml(hints[f.name], indent + 2).rstrip("\n"))
            continue
        dumped = yaml.safe_dump({f.name: to_dict(val) if dataclasses.is_dataclass(val) else
                                 (list(val) if isinstance(val, tuple) else val)},
                                default_flow_style=True, width=1000).strip()
        dumped = dumped[1:-1] if dumped.startswith("{") else dumped
        comment = f"  # {docs[f.name]}" if f.name in docs else ""
        lines.append(f"{pad}{dumped}{comment}")
    return "\n".join(lines) + "\n"
