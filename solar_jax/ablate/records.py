"""What an ablation writes, shared by the sweep (its per-point records) and the report
(results.json/csv): the columns of a results row, records made JSON-safe, and the store of
per-point records in out_dir/points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from solar_jax.destination import write_text_atomic
from solar_jax.errors import SolarError

COLUMNS = ("m", "cut_a", "cut_b", "layers", "params", "seam_distance", "loss_before",
           "ppl_before", "acc_before", "loss_after", "ppl_after", "acc_after", "heal_tokens",
           "heal_steps", "heal_final_train_loss", "heal_status", "seconds")


def jsonable(x):
    """x with numpy scalars/arrays as Python values and non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


RECORD_VERSION = 1


class Store:
    """out_dir/points/<key>.json records: {"version", "key", "settings", "record"}, each
    written atomically the moment it is done (what a restarted sweep resumes from)."""

    def __init__(self, out_dir: str | Path, *, overwrite: bool, writer: bool = True):
        self.dir = Path(out_dir) / "points"
        self.overwrite, self.writer = overwrite, writer

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str, settings: dict) -> dict | None:
        """The stored record of `key` if it was made with `settings`; None if absent (or
        stale and overwrite=true); a stale record otherwise is an error."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            stored, record = data["settings"], data["record"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None  # unreadable: recompute (writes are atomic, so only hand edits)
        if stored != jsonable(settings):
            if self.overwrite:
                return None
            changed = sorted(k for k in set(stored) | set(settings)
                             if stored.get(k) != jsonable(settings).get(k))
            raise SolarError(f"{path.parent.parent} holds results of a different setup "
                             f"({', '.join(changed)} changed); use another out_dir, or "
                             f"overwrite=true to recompute them")
        return record

    def put(self, key: str, settings: dict, record: dict) -> None:
        if self.writer:
            data = {"version": RECORD_VERSION, "key": key, "settings": settings,
                    "record": record}
            write_text_atomic(self.path(key), json.dumps(jsonable(data), indent=1) + "\n")
