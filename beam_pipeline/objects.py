"""``ValidateObjects``: the object checks ``benbeam validate`` runs, as a transform on metadata rows.

Rows are sampled, split-selected, checked and de-duplicated (``CheckRows``), grouped by the
folder that holds their objects (each folder listed once), and every patch's 15 objects are
checked for existence, size and containment (``deep``: also decoded). One result per
selected row: ``{"patch_id", "split", "reasons": [{"stage", "reason", "detail"}]}``, an empty
``reasons`` meaning the patch is fine.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import apache_beam as beam

from bigearthnet_beam.beam_pipeline.validate import ValidateGroupFn, _prefix
from bigearthnet_beam.schemas.naming import OBJECT_KEYS
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.patch import DEFAULT_DECODE_TIMEOUT
from bigearthnet_beam.transforms.ptransforms import CheckRows
from bigearthnet_beam.transforms.storage import Storage


def _dead_result(d: dict) -> dict:
    return {
        "patch_id": d["patch_id"],
        "split": d["split"],
        "reasons": [{"stage": d["stage"], "reason": d["reason"], "detail": d["detail"]}],
    }


@dataclass
class ValidateObjects(beam.PTransform):
    """Metadata rows -> one result dict per selected row: the patch's failing checks (none: valid)."""

    root: str
    _: KW_ONLY
    storage: Storage | None = None
    splits: tuple[str, ...] = ("train", "validation", "test")
    frac: float = 1.0
    deep: bool = False
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT

    def expand(self, rows):
        """Results of the metadata checks and of the object checks."""
        st = self.storage if self.storage is not None else Storage()
        checked = rows | "CheckRows" >> CheckRows(self.root, tuple(self.splits), self.frac)
        results = (
            checked["patches"]
            | "ByFolder" >> beam.Map(lambda r: (_prefix(md.record_urls(r)[OBJECT_KEYS[0]]), r))
            | "Group" >> beam.GroupByKey()
            | "Check" >> beam.ParDo(ValidateGroupFn(self.deep, st, self.decode_timeout))
        )
        dead = checked["dead"] | "MetaDead" >> beam.Map(_dead_result)
        return (results, dead) | "All" >> beam.Flatten()
