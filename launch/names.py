"""Google Cloud names checked before anything is built or contacted (plain Python).

A placeholder such as ``--project p`` or ``gs://b/tmp`` fails here with one line saying
which rule it breaks, instead of deep inside the Dataflow client.
"""

from __future__ import annotations

import re

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")


def check_project(project: str) -> str:
    """``project`` if it is a valid Google Cloud project id, else ValueError with the rule."""
    if not _PROJECT.match(project or ""):
        raise ValueError(
            f"--project {project!r} is not a Google Cloud project id: 6-30 characters, lowercase "
            "letters, digits and hyphens, starting with a letter (e.g. my-project-123)"
        )
    return project


def check_region(region: str) -> str:
    """``region`` if it looks like a Google Cloud region (``europe-west4``), else ValueError."""
    if not _REGION.match(region or ""):
        raise ValueError(f"--region {region!r} is not a Google Cloud region such as europe-west4 or us-central1")
    return region


def check_launch(ns) -> None:
    """The Google Cloud names among parsed ``benbeam launch`` flags (Dataflow only); ValueError."""
    if getattr(ns, "runner", None) != "dataflow":
        return
    check_project(ns.project)
    check_region(ns.region)
    check_gcs_url(ns.temp_location, "--temp_location")
    if ns.staging_location:
        check_gcs_url(ns.staging_location, "--staging_location")


def check_gcs_url(url: str, flag: str) -> str:
    """``url`` if it is ``gs://BUCKET/...`` with a valid bucket name, else ValueError."""
    if not str(url).startswith("gs://"):
        raise ValueError(f"{flag} {url!r} must be a gs:// folder")
    bucket = url[len("gs://") :].split("/", 1)[0]
    if not _BUCKET.match(bucket) or ".." in bucket or bucket.startswith("goog"):
        raise ValueError(
            f"{flag} {url!r}: {bucket!r} is not a valid bucket name (3-63 characters: lowercase letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit)"
        )
    return url
