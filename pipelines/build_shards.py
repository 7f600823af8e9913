"""Entry point `python -m pipelines.build_shards`: the whole run on Ray, locally or on a cluster, resumable.

Phase A (per unit, parallel): read rows -> text + language prefilter -> download/decode/resize -> hashes
-> stage/<unit>.{tar,parquet}; then CLIP scoring over completed units (Ray Data actor pool).
Phase B (metadata only): dedup clusters, CLIP threshold, balancing, shard assignment.
Phase C: shards, metadata, manifest, report.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager

from curate import fsutil
from curate.config import ConfigError, RunConfig, documented_yaml, dump_yaml, load_config, to_dict
from pipelines.cli import build_parser, overrides_from_args
from pipelines.progress import Progress

# keys that may change between a run and its resume without changing any output
RESUME_NEUTRAL = ("overwrite", "progress", "num_cpus", "ray_address", "max_units_in_flight",
                  "download.retry_failed", "download.threads")


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


def _comparable(cfg_dict: dict) -> dict:
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_dict.items()}
    for key in RESUME_NEUTRAL:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return d


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + k)
    return out


def prepare_output(cfg: RunConfig) -> None:
    """Creates the output, or checks that an existing one was made with the same config (resume)."""
    import yaml

    fs, out = fsutil.get_fs(cfg.output)
    cfg_path = fsutil.join(out, "config.yaml")
    if cfg.overwrite and fsutil.exists(fs, out):
        fs.delete_dir(out) if not fsutil.is_local(fs) else shutil.rmtree(out)
    if fsutil.exists(fs, cfg_path):
        old = yaml.safe_load(fsutil.read_bytes(fs, cfg_path)) or {}
        diff = _diff_keys(_comparable(old), _comparable(to_dict(cfg)))
        if diff:
            raise RunError(f"output {cfg.output} was made with a different config (differs in: "
                           f"{', '.join(diff[:8])}); rerun with the same config to resume, or pass --overwrite")
    fsutil.atomic_write(fs, cfg_path, dump_yaml(cfg).encode())


def check_dependencies(cfg: RunConfig) -> None:
    """Fails now, not hours later on a worker: backends and models the run needs must load."""
    if cfg.language.enabled:
        from curate.language import check_backend
        check_backend(cfg.language)
    if cfg.clip.enabled:
        from curate.clip.model import load_clip
        load_clip(cfg.clip.model, cfg.clip.pretrained, "cpu")


@contextmanager
def ray_session(cfg: RunConfig):
    """Connects to a cluster (RAY_ADDRESS, ray job submit, or cfg.ray_address) or starts local Ray."""
    import ray

    started = False
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        env = {"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
            print(f"connected to Ray cluster at {address}", file=sys.stderr)
        else:
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, runtime_env=env,
                     configure_logging=False)
            print(f"started local Ray with {ray.cluster_resources().get('CPU', 0):.0f} CPUs", file=sys.stderr)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _process_unit_task(args):
    """Ray task body (module-level so it pickles by reference)."""
    import ray

    from curate.unit import process_unit, retry_unit
    unit_id, cfg, retry, score = args
    extra = {"node_id": ray.get_runtime_context().get_node_id()} if ray.is_initialized() else {}
    return retry_unit(unit_id, cfg, extra) if retry else process_unit(unit_id, cfg, extra, score=score)


def score_in_units(cfg: RunConfig) -> bool:
    """True when CLIP scores are computed inside the download tasks: a CPU-only cluster (a GPU cluster
    scores in the Ray Data actor pool) and no embeddings asked for (those come from the scoring pass)."""
    import ray

    if not (cfg.clip.enabled and cfg.clip.cpu_in_units) or cfg.clip.save_embeddings or cfg.clip.device == "cuda":
        return False
    if ray.cluster_resources().get("GPU", 0) and cfg.clip.device != "cpu":
        return False
    print("clip scoring: no GPU in the Ray cluster; scoring on CPU inside the download tasks", file=sys.stderr)
    return True


def phase_a(cfg: RunConfig, units: list) -> None:
    """Downloads every unit not yet complete (and retries failures when asked), with progress."""
    from curate.parallel import parallel_map
    from curate.stage_io import unit_done

    todo = [u for u in units if not unit_done(cfg.output, u.unit_id)]
    retry = [u for u in units if u not in todo] if cfg.download.retry_failed else []
    print(f"phase A: {len(units)} units, {len(units) - len(todo)} already complete, {len(todo)} to fetch"
          + (f", {len(retry)} to re-check for retryable failures" if retry else ""), file=sys.stderr)
    if not todo and not retry:
        return
    score = bool(todo) and score_in_units(cfg)
    jobs = [(u.unit_id, cfg, False, score) for u in todo] + [(u.unit_id, cfg, True, False) for u in retry]
    rows = {u.unit_id: u.num_rows for u in units}
    prog = Progress("download", len(jobs), sum(rows[j[0]] for j in jobs), enabled=cfg.progress)

    def on_result(_i, stats):
        if stats is None:  # a retry with nothing to retry
            prog.update(0)
            return
        counts = stats.get("status_counts", {})
        failed = sum(v for k, v in counts.items() if k in ("download_error", "decode_error"))
        prog.update(stats.get("rows", 0), stats.get("images", 0), failed)

    limit = cfg.max_units_in_flight or None
    parallel_map(_process_unit_task, jobs, num_cpus=1, max_in_flight=limit, on_result=on_result, spread=True)
    prog.close()


def phase_scoring(cfg: RunConfig, units: list) -> None:
    if not cfg.clip.enabled:
        return
    from pipelines.scoring import score_units
    t0 = time.time()
    res = score_units(cfg.output, [u.unit_id for u in units], cfg.clip)
    print(f"phase A (scoring): {res} in {time.time() - t0:.1f} s", file=sys.stderr)


def run(cfg: RunConfig) -> dict:
    """Runs (or resumes) the whole job; returns the manifest."""
    from curate.reader import plan_units
    from pipelines.select_write import phase_b_c

    if not cfg.output:
        raise RunError("no output given: pass --output DIR (or output: in the config)")
    if not cfg.input.paths:
        raise RunError("no input given: pass --input FILE|DIR|GLOB (or input.paths in the config)")
    check_dependencies(cfg)
    prepare_output(cfg)
    t0 = time.time()
    with ray_session(cfg):
        units = plan_units(cfg.input, cfg.output)
        phase_a(cfg, units)
        phase_scoring(cfg, units)
        manifest = phase_b_c(cfg, units)
    manifest_time = time.time() - t0
    print(f"run finished in {manifest_time:.1f} s -> {cfg.output}", file=sys.stderr)
    return manifest


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_config:
        print(documented_yaml(), end="")
        return 0
    from curate.reader import InputError
    try:
        cfg = load_config(args.config, overrides_from_args(args))
        run(cfg)
    except (ConfigError, RunError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
