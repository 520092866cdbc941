"""Why a conversion produced no statistics: the dead letters of its training patches.

When every training patch fails, ``convert`` cannot normalise anything and its pipeline
stops before ``finalize``; this re-checks the training split in the driver (metadata
checks, fetch, decode: the same plain functions the workers run) so that the run still
leaves ``failures.jsonl`` and one line with the top reasons. Plain Python (no Beam).
"""

from __future__ import annotations

import json
from collections import Counter

from bigearthnet_beam.schemas import failures, manifest
from bigearthnet_beam.transforms import storage

LIMIT = 20_000  # training patches re-checked at most (a failed run should not take a second hour)


def training_dead_letters(
    plan, resampling: str, decode_timeout, limit: int = LIMIT, st=None
) -> tuple[list[dict], int, int]:
    """(dead letters, training patches checked, training patches that decode) of ``plan``'s training split."""
    from bigearthnet_beam.transforms.shard_reader import load_patch

    dead: list[dict] = []
    checked = ok = 0
    for home in plan.homes():
        if home[0] != "train":
            continue
        _, meta_dead, clean = plan.check(home)
        dead.extend(meta_dead)
        checked += len(meta_dead)
        for rec in clean:
            if checked >= limit:
                return dead, checked, ok
            checked += 1
            try:
                load_patch(rec, resampling, decode_timeout, st)
                ok += 1
            except failures.PatchError as e:
                dead.append(e.record(rec["patch_id"], rec["split"]))
    return dead, checked, ok


def top_reasons(dead: list[dict], n: int = 4) -> str:
    """``missing_object 38, decode_error 2`` — the most frequent reasons with counts."""
    counts = Counter(d["reason"] for d in dead).most_common()
    shown = ", ".join(f"{r} {c}" for r, c in counts[:n])
    return shown + (f", {len(counts) - n} more reasons" if len(counts) > n else "")


def write_failures(out: str, dead: list[dict], st=None) -> str:
    """Write ``failures.jsonl`` (sorted as ``finalize`` sorts it); returns its URL."""
    dead = sorted(dead, key=lambda d: (d["patch_id"], d["stage"], d["reason"], d["detail"]))
    url = storage.join(out, manifest.FAILURES_JSONL)
    (st or storage.Storage()).write_bytes_atomic(
        url, "".join(json.dumps(d, sort_keys=True, ensure_ascii=True) + "\n" for d in dead).encode()
    )
    return url


def not_processed(rec: dict) -> dict:
    """The dead letter of a patch a stopped run never wrote."""
    return failures.dead_letter(
        rec["patch_id"],
        failures.WRITE,
        "not_processed",
        "not written: the conversion stopped because no statistics could be computed from the training "
        "patches; fix those (see their lines here) or pass --stats from an earlier run",
        rec["split"],
    )


def unprocessed_dead_letters(plan, training_dead: list[dict]) -> list[dict]:
    """Every other selected row of ``plan`` as a dead letter: the metadata failures of the other
    splits, and ``not_processed`` for each clean patch without a line in ``training_dead``."""
    failed = {d["patch_id"] for d in training_dead if d["stage"] != failures.METADATA}  # fetched and failed
    dead: list[dict] = []
    for home in plan.homes():
        _, meta_dead, clean = plan.check(home)
        if home[0] != "train":
            dead.extend(meta_dead)
        dead.extend(not_processed(rec) for rec in clean if rec["patch_id"] not in failed or home[0] != "train")
    return dead


def no_statistics(plan, out: str, resampling: str, decode_timeout, st=None) -> str:
    """Write a dead letter for every selected row to ``out`` (the training split's reasons, then
    ``not_processed`` for the rest, so written + failed = input) and return the one line that says why."""
    dead, checked, ok = training_dead_letters(plan, resampling, decode_timeout, st=st)
    url = write_failures(out, dead + unprocessed_dead_letters(plan, dead), st)
    scope = f"the first {checked:,} checked" if checked >= LIMIT else f"{checked:,}"
    if not checked:
        return "the training split selects no patch, so no statistics can be computed; pass --stats from an earlier run"
    return (
        f"no statistics: {len(dead):,} of {scope} training patches failed ({top_reasons(dead)}), "
        f"{ok} decoded; see {url}"
    )
