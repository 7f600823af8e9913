"""Where each file of a run output lies: the names from schemas/layout.json, joined into paths by RunLayout."""
from __future__ import annotations

from dataclasses import asdict, astuple, dataclass

from curate import fsutil
from curate.schema import output_layout


@dataclass(frozen=True)
class Names:
    """The output's names relative to <output> (schemas/layout.json), e.g. NAMES.ledger == "metadata/ledger";
    sizes, timings and plan are file names inside shards/, stage/ and the input folder."""
    config: str
    manifest: str
    report: str
    lock: str
    shards: str
    sizes: str                       # inside shards/
    metadata: str
    samples: str
    ledger: str
    stage: str
    timings: str                     # inside stage/
    input: str
    plan: str                        # inside input/
    optout_hosts: str                # inside stage/ (the opt-out pre-pass) and metadata/ (its copy)
    part: str                        # "part-{name}.parquet": one file per shard (samples) or unit (ledger)
    unit_digits: int                 # unit names are zero-padded to this width
    shard_files: dict[str, str]      # kind -> suffix of each shard's files (ShardPaths)
    unit_files: dict[str, str]       # kind -> suffix of each unit's stage files (UnitPaths)
    input_unit_suffix: str           # _input/<unit><suffix>: a unit's input rows
    in_manifest: tuple[str, ...]     # the names manifest.json's "layout" mapping lists

    def top_level(self) -> frozenset[str]:
        """The entries a curate output may hold directly under <output>."""
        paths = (self.config, self.manifest, self.report, self.lock, self.shards, self.metadata, self.samples,
                 self.ledger, self.stage, self.input)
        return frozenset(p.split("/")[0] for p in paths)

    def manifest_layout(self) -> dict[str, str]:
        """manifest.json's "layout" value: {shards: "shards", samples: "metadata/samples", ...}."""
        return {k: getattr(self, k) for k in self.in_manifest}

    def part_name(self, name: str) -> str:
        return self.part.format(name=name)


def _names() -> Names:
    spec = output_layout()
    return Names(**spec["names"], part=spec["part"], unit_digits=int(spec["unit_digits"]),
                 shard_files=dict(spec["shard_files"]), unit_files=dict(spec["unit_files"]),
                 input_unit_suffix=spec["input_unit_suffix"], in_manifest=tuple(spec["in_manifest"]))


NAMES = _names()


def unit_name(unit_id: int) -> str:
    """Zero-padded unit name used in file names ("000042")."""
    return f"{unit_id:0{NAMES.unit_digits}d}"


@dataclass(frozen=True)
class ShardPaths:
    """One shard's files: NAME.tar (webdataset), NAME.parquet (its samples), NAME_stats.json."""
    tar: str
    samples: str
    stats: str

    def files(self) -> tuple[str, ...]:
        return astuple(self)


@dataclass(frozen=True)
class UnitPaths:
    """One work unit's stage files (phase A output, scores, completion records)."""
    tar: str
    ledger: str
    stats: str
    scores: str
    embeddings: str
    done: str
    scores_done: str
    reinforce: str          # reinforce on: uid, KEY.npz bytes and view parameters per ok row
    reinforce_done: str     # its completion record (names the teachers, views and seed)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run output. `output` is a local path, an s3:// URL or a path inside a pyarrow
    filesystem (fsutil.get_fs); paths are joined as strings (fsutil.join), nothing is touched."""
    output: str

    def _join(self, *parts: str) -> str:
        return fsutil.join(self.output, *parts)

    @property
    def config(self) -> str:
        return self._join(NAMES.config)

    @property
    def manifest(self) -> str:
        return self._join(NAMES.manifest)

    @property
    def report(self) -> str:
        return self._join(NAMES.report)

    @property
    def lock(self) -> str:
        return self._join(NAMES.lock)

    @property
    def shards(self) -> str:
        return self._join(NAMES.shards)

    @property
    def sizes(self) -> str:
        return self._join(NAMES.shards, NAMES.sizes)

    @property
    def metadata(self) -> str:
        return self._join(NAMES.metadata)

    @property
    def samples(self) -> str:
        return self._join(NAMES.samples)

    @property
    def ledger(self) -> str:
        return self._join(NAMES.ledger)

    @property
    def stage(self) -> str:
        return self._join(NAMES.stage)

    @property
    def timings(self) -> str:
        return self._join(NAMES.stage, NAMES.timings)

    @property
    def input_dir(self) -> str:
        return self._join(NAMES.input)

    @property
    def plan(self) -> str:
        return self._join(NAMES.input, NAMES.plan)

    @property
    def stage_optout_hosts(self) -> str:
        """stage/optout_hosts.parquet: the run's host policies, fetched by the driver before phase A."""
        return self._join(NAMES.stage, NAMES.optout_hosts)

    @property
    def optout_hosts(self) -> str:
        """metadata/optout_hosts.parquet: phase C's copy of the host policies, for audits."""
        return self._join(NAMES.metadata, NAMES.optout_hosts)

    def shard(self, name: str) -> ShardPaths:
        """shards/NAME.tar, shards/NAME.parquet, shards/NAME_stats.json."""
        base = self._join(NAMES.shards, name)
        return ShardPaths(**{k: base + s for k, s in NAMES.shard_files.items()})

    def sample_part(self, name: str) -> str:
        """metadata/samples/part-NAME.parquet: shard NAME's samples."""
        return self._join(NAMES.samples, NAMES.part_name(name))

    def ledger_part(self, unit_id: int) -> str:
        """metadata/ledger/part-UNIT.parquet: one unit's final ledger rows."""
        return self._join(NAMES.ledger, NAMES.part_name(unit_name(unit_id)))

    def unit(self, unit_id: int) -> UnitPaths:
        """stage/UNIT.tar, .parquet, _stats.json, .scores.parquet, .emb.parquet, .done.json, .scores.done.json,
        .reinforce.parquet, .reinforce.done.json."""
        base = self._join(NAMES.stage, unit_name(unit_id))
        return UnitPaths(**{k: base + s for k, s in NAMES.unit_files.items()})

    def input_unit(self, unit_id: int) -> str:
        """_input/UNIT.parquet: the unit's input rows, as planned."""
        return self._join(NAMES.input, unit_name(unit_id) + NAMES.input_unit_suffix)

    def relative(self, path: str) -> str:
        """`path` (one of this layout's) relative to the output, e.g. "shards/00000.tar"."""
        prefix = self.output.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not inside the output {self.output}")
        return path[len(prefix):]
