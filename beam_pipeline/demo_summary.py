"""Print the summary of a converted dataset's manifest (used by ``make demo``)."""

from __future__ import annotations

import sys

from bigearthnet_beam.beam_pipeline.run_record import summary
from bigearthnet_beam.schemas.bands import ALL_NAMES


def main(argv: list[str]) -> int:
    """Print the manifest summary of the dataset folder ``argv[0]``; returns 0."""
    man = summary(argv[0])
    print(f"\n== {argv[0]}/dataset.json (schema v{man['schema_version']}, benbeam {man['package_version']})")
    for name, s in man["splits"].items():
        print(
            f"  {name:<11} input {s['input']:>6}  written {s['written']:>6}  failed {s['failed']:>4}  "
            f"shards {len(s['shards'])}  label/map disagreements {s['label_disagreements']}"
        )
    f = man["failures"]
    print(f"  failures: {f['total']} by reason {f['by_reason']}")
    st = man["statistics"]["bands"]
    print("  band statistics (train): " + ", ".join(f"{b} {st[b]['mean']:.1f}±{st[b]['std']:.1f}" for b in ALL_NAMES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
