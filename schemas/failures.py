"""Dead-letter vocabulary: pipeline stages, failure reasons, and injected fault kinds.

Every dead letter is ``{"patch_id", "split", "stage", "reason", "detail", "reasons"}`` where
``stage`` and ``reason`` come from the tables below (they name Beam counters too) and
``detail`` is a sentence a person can act on; ``reason`` is the first failing check (what
counts are kept by) and ``reasons`` lists every failing check found, each
``{"stage", "reason", "detail"}``, so that a patch's problems can be fixed at once. The
synthetic generator's fault kinds map to the (stage, reason) the pipeline must report for
them: tests use that mapping as ground truth.
"""

from __future__ import annotations

import json

# Stages, in pipeline order.
METADATA = "metadata"  # a row of metadata.parquet is unusable
FETCH = "fetch"  # an object could not be read from storage
DECODE = "decode"  # an object's bytes are not a readable GeoTIFF
CHECK = "check"  # decoded rasters violate the reBEN format
WRITE = "write"  # the example could not be encoded or written
STAGES = (METADATA, FETCH, DECODE, CHECK, WRITE)

REASONS: dict[str, str] = {
    # metadata
    "missing_field": "a required column is null or absent",
    "malformed_patch_id": "patch_id does not follow the reBEN naming",
    "malformed_s1_name": "s1_name does not follow the reBEN naming",
    "unknown_split": "split is not train, validation or test",
    "unknown_label": "a label is not one of the 19 classes",
    "empty_labels": "the patch has no labels",
    "duplicate_patch_id": "the patch id occurs more than once",
    # fetch
    "missing_object": "an object does not exist",
    "empty_object": "an object is zero bytes",
    "read_error": "an object could not be read (after retries)",
    "access_denied": "reading an object was refused (403): credentials or bucket permissions",
    # fetch, refused before anything is opened (transforms.containment)
    "outside_root": "an object path resolves (after symlinks) outside the dataset root",
    "unsupported_scheme": "an object URL uses a scheme other than the dataset root's (e.g. http://)",
    "path_traversal": "an object path holds '..' or '.' segments",
    "not_a_file": "an object path names a directory, FIFO, device or socket, not a regular file",
    "object_too_large": "an object is larger than any reBEN object can be",
    # decode
    "decode_error": "an object is not a decodable GeoTIFF (truncated or corrupt)",
    "decode_timeout": "decoding an object took longer than --decode_timeout (corrupt or hostile file)",
    # check
    "wrong_size": "a raster has the wrong width/height for its band",
    "wrong_dtype": "a raster has the wrong data type",
    "crs_mismatch": "a layer's CRS differs from the patch's UTM zone",
    "grid_mismatch": "a layer's origin or pixel size is not on the patch's grid",
    "s2_nodata": "an S2 band holds nodata (0) pixels",
    "s1_nan": "an S1 band holds NaN or infinite values",
    "unknown_clc_code": "the reference map holds a code outside the CLC table",
    # write
    "encode_error": "the example could not be serialised",
    "not_processed": "the run stopped (e.g. no statistics could be computed) before this patch was written",
}


class PatchError(Exception):
    """A patch-level failure that becomes a dead letter (never crashes the job).

    ``also``: further failing checks of the same patch (PatchErrors), found after this one.
    """

    def __init__(self, stage: str, reason: str, detail: str, also: tuple = ()):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(stage, reason, detail)
        self.stage, self.reason, self.detail = stage, reason, detail
        self.also = tuple(also)

    def __str__(self) -> str:
        more = f" (and {len(self.also)} more)" if self.also else ""
        return f"{self.stage}/{self.reason}: {self.detail}{more}"

    def __reduce__(self):
        return (PatchError, (self.stage, self.reason, self.detail, self.also))

    def checks(self) -> list[dict]:
        """Every failing check: this one first, then ``also``."""
        return [{"stage": e.stage, "reason": e.reason, "detail": e.detail} for e in (self, *self.also)]

    def record(self, patch_id: str, split: str | None = None) -> dict:
        """The dead-letter record of this error for ``patch_id``."""
        return dead_letter(patch_id, self.stage, self.reason, self.detail, split, self.checks())


def combine(errors: list) -> "PatchError":
    """One PatchError for a patch's failing checks (the first; the others as ``also``)."""
    first, rest = errors[0], errors[1:]
    return PatchError(first.stage, first.reason, first.detail, tuple(rest) + first.also)


def spelling(value) -> str:
    """A metadata value as the key it is accounted under: a string as it is; anything else in its
    JSON spelling (``null``, ``3``, ``true``: the manifest and dead letters are JSON, so a missing
    value is never Python's ``None``), or its repr where JSON has none (bytes)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def dead_letter(patch_id, stage: str, reason: str, detail: str, split=None, reasons: list | None = None) -> dict:
    """A dead-letter record; ``split`` is kept for per-split accounting (None: no split known);
    ``reasons``: every failing check (default: just this one)."""
    return {
        "patch_id": spelling(patch_id),
        "split": None if split is None else spelling(split),
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "reasons": reasons if reasons else [{"stage": stage, "reason": reason, "detail": detail}],
    }


# Fault kinds the synthetic generator can inject -> the (stage, reason) they must produce.
FAULT_EXPECTATIONS: dict[str, tuple[str, str]] = {
    "missing_band_file": (FETCH, "missing_object"),
    "zero_byte_file": (FETCH, "empty_object"),
    "truncated_tiff": (DECODE, "decode_error"),
    "wrong_raster_size": (CHECK, "wrong_size"),
    "s2_nodata_zeros": (CHECK, "s2_nodata"),
    "s1_nan": (CHECK, "s1_nan"),
    "misaligned_origin": (CHECK, "grid_mismatch"),
    "wrong_crs": (CHECK, "crs_mismatch"),
    "missing_s1_folder": (FETCH, "missing_object"),
    "unknown_clc_code": (CHECK, "unknown_clc_code"),
    "missing_files": (FETCH, "missing_object"),
}
FAULT_KINDS: tuple[str, ...] = tuple(FAULT_EXPECTATIONS)
