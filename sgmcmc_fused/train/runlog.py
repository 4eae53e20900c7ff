"""Per-run logs: one CSV row and one JSON record per event, rewritten from the full history.

The logs are derived from the rows kept in the checkpoint, and rewritten whole (atomically) each time,
so after a crash and ``--resume`` they hold exactly the rows of the resumed run, with no duplicates.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic_file import atomic_write


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file and a rename (readers never see half a file)."""
    with atomic_write(path, "w", durable=False, encoding="utf-8", newline="") as f:
        f.write(text)


def write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Rows as CSV with a header of `columns` (missing values empty, floats in full precision)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    write_text_atomic(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_run_logs(
    run_dir: str | os.PathLike,
    epoch_columns: Sequence[str],
    history: Sequence[dict[str, Any]],
    sample_columns: Sequence[str],
    curve: Sequence[dict[str, Any]],
    record: Any,
) -> None:
    """A trainer's logs in `run_dir`: log.csv (a row per epoch), samples.csv (a row per sample) and
    log.json (`record`)."""
    run_dir = Path(run_dir)
    write_csv(run_dir / "log.csv", epoch_columns, history)
    write_csv(run_dir / "samples.csv", sample_columns, curve)
    write_json(run_dir / "log.json", record)
