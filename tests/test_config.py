"""The run config: strict keys, typed values, CLI overrides, documented defaults kept in sync."""
from __future__ import annotations

from pathlib import Path

import pytest

from curate.config import ConfigError, RunConfig, documented_yaml, dump_yaml, load_config, to_dict
from pipelines.cli import build_parser, overrides_from_args

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "pipelines" / "default.yaml"


def test_unknown_key_names_itself_and_lists_known(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("download:\n  timout: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'timout' in download \(known: .*timeout"):
        load_config(str(p))


def test_bad_types_and_choices_name_the_key():
    with pytest.raises(ConfigError, match="download.timeout"):
        load_config(None, {"download.timeout": "soon"})
    with pytest.raises(ConfigError, match="image.resize_mode"):
        load_config(None, {"image.resize_mode": "stretch"})
    with pytest.raises(ConfigError, match="input.unit_size"):
        load_config(None, {"input.unit_size": 0})
    with pytest.raises(ConfigError, match=r"dedup.colour_chroma: must be > 0 \(dedup.colour_check: false"):
        load_config(None, {"dedup.colour_chroma": 0})
    for bad in ({"dedup.plain_detail": -1}, {"dedup.plain_tol": 0}):
        with pytest.raises(ConfigError, match=r"dedup.plain_detail: must be >= 0 \(0: off\) and dedup.plain_tol > 0"):
            load_config(None, bad)


def test_yaml_then_cli_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("image:\n  size: 128\nlanguage:\n  languages: [en, de]\n")
    args = build_parser().parse_args(["--config", str(p), "--image-size", "64", "--allow-private-networks",
                                      "--set", "download.per_domain_rps=2.5", "--keep-columns", "a,b"])
    cfg = load_config(args.config, overrides_from_args(args))
    assert cfg.image.size == 64 and cfg.language.languages == ("en", "de")
    assert cfg.download.allow_private_networks is True and cfg.download.per_domain_rps == 2.5
    assert cfg.input.keep_columns == ("a", "b")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, {"clip.threshold": 0.28, "balance.lang_caps": {"en": 10}})
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(str(p)) == cfg


def test_every_option_is_documented_and_default_yaml_is_in_sync():
    text = documented_yaml()
    lines = [ln for ln in text.splitlines() if not ln.rstrip().endswith(":")]
    undocumented = [ln.strip() for ln in lines if "  # " not in ln]
    assert not undocumented, f"options without a comment in curate/config.py: {undocumented}"
    assert DEFAULT_YAML.read_text() == text, "regenerate with: python -m pipelines.build_shards --print-config"
    assert to_dict(load_config(str(DEFAULT_YAML))) == to_dict(RunConfig())
