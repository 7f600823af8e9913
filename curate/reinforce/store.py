"""The reinforced-sample format: KEY.npz (float16 teacher embeddings, byte-stable) and the stage file columns."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import numpy.lib.format as npformat
import pyarrow as pa

from curate.schema import COL

NPZ = "reinforce_npz"      # stage/<unit>.reinforce.parquet: the sample's KEY.npz bytes
VIEWS = "reinforce_views"  # ... and its views' parameters (canonical JSON list, view_params)
# the reinforce file's columns (curate.reinforce.teachers.reinforce_table): torch-free, so a driver can write
# the empty file of a unit without ok rows
TABLE_SCHEMA = pa.schema([(COL.UID, pa.string()), (NPZ, pa.binary()), (VIEWS, pa.string())])
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member time: the same embeddings always give the same bytes


def image_key(teacher: int) -> str:
    """npz name of teacher t's view embeddings, shape [views, D_t]."""
    return f"image_emb_{teacher}"


def text_key(teacher: int) -> str:
    """npz name of teacher t's caption embedding, shape [1, D_t]."""
    return f"text_emb_{teacher}"


def write_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """numpy's .npz (uncompressed zip of .npy members, what np.savez writes and np.load and webdataset read),
    with fixed member times: np.savez stamps the clock, which would make reruns differ byte-wise."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            npformat.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME), member.getvalue())
    return buf.getvalue()


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    """{name: array} of KEY.npz bytes (no pickled objects)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
