"""What a finished ``convert`` reports: the manifest's summary lines, the counters, ``run.json``, and the
artifacts a runner staged."""

from __future__ import annotations

import json
import sys

from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.transforms import storage


def summary(out: str, st: storage.Storage | None = None) -> dict:
    """The manifest a run just wrote, as its JSON dict."""
    return json.loads((st or storage.Storage()).read_bytes(storage.join(out, manifest_schema.MANIFEST)))


def print_summary(man: dict, seconds: float, stream=None) -> None:
    """Per split: input, written, failed and shards; the failures by reason; the throughput."""
    stream = stream or sys.stdout  # looked up per call: sys.stdout may have been replaced since import
    total_in = sum(s["input"] for s in man["splits"].values())
    total_w = sum(s["written"] for s in man["splits"].values())
    print(f"dataset: {man['options']['out']}", file=stream)
    for name, s in man["splits"].items():
        print(
            f"  {name:<11} input {s['input']:>7}  written {s['written']:>7}  failed {s['failed']:>6}  "
            f"shards {len(s['shards'])}",
            file=stream,
        )
    if man["failures"]["total"]:
        reasons = ", ".join(f"{k} {v}" for k, v in man["failures"]["by_reason"].items())
        print(f"  failures: {man['failures']['total']} ({reasons}) -> {man['failures']['file']}", file=stream)
    rate = total_in / seconds if seconds else 0.0
    print(f"  {total_w} patches written in {seconds:.1f} s ({rate:.1f} patches/s)", file=stream)


def print_counters(results, stream=None) -> dict[str, int]:
    """Summarise the Beam counters of the jobs ``[(name, result)]`` (outcomes by reason,
    bytes); the metadata is read and checked in both jobs and counted once (the statistics
    job contributes its ``ComputeBandStats`` counters only). Returns them."""
    stream = stream or sys.stderr
    totals: dict[str, int] = {}
    counters = []
    for name, result in results:
        try:
            counters += [
                c for c in result.metrics().query()["counters"] if name != "stats" or "ComputeBandStats" in c.key.step
            ]
        except Exception:  # noqa: BLE001 - some runners do not report metrics
            continue
    for c in counters:
        if c.key.metric.namespace == "benbeam":
            totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
    if totals:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())), file=stream)
    return dict(sorted(totals.items()))


def write_run_record(
    out: str,
    man: dict,
    seconds: float,
    opts,
    counters: dict,
    st: storage.Storage | None = None,
    metadata: list[dict] | None = None,
) -> dict:
    """``run.json``: how this run went (time, throughput, runner; ``metadata``: the files read, with
    their paths and sha256). Not part of the manifest, which describes the rows it received and
    stays byte-identical between runs; the report's throughput section reads it."""
    import datetime
    import resource

    from bigearthnet_beam.beam_pipeline import __version__

    allopts = opts.get_all_options()
    patches = sum(s["input"] for s in man["splits"].values())
    rec = {
        "package_version": __version__,
        "seconds": round(seconds, 3),
        "patches": patches,
        "patches_per_s": round(patches / seconds, 2) if seconds else None,
        "runner": allopts.get("runner") or "DirectRunner",
        "direct_running_mode": allopts.get("direct_running_mode"),
        "workers": allopts.get("direct_num_workers") or allopts.get("num_workers"),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "counters": counters,
        "metadata": metadata or [],
    }
    (st or storage.Storage()).write_bytes_atomic(
        storage.join(out, manifest_schema.RUN_JSON), (json.dumps(rec, indent=2, sort_keys=True) + "\n").encode()
    )
    return rec


def staged_artifacts(result) -> list[str]:
    """Names of the files a (dry-run) Dataflow job stages for its workers."""
    from apache_beam.portability.api import beam_runner_api_pb2

    job = getattr(result, "job", None)
    names = []
    for env in job.proto_pipeline.components.environments.values() if job else ():
        for dep in env.dependencies:
            names.append(beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name)
    return sorted(set(names))
