"""The bodies of ``quasar models`` and ``quasar export``.

Their options (names, help, parsing) are declared in quasar/commands/models.py and
quasar/commands/export.py; errors become exit codes in quasar/commands/base.py.
No torch at module level: the command line imports this module before it runs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

from quasar.constants import BUNDLE_JSON, DEFAULT_MODEL
from quasar.home import bundle_cache_dir
from quasar.models.catalog import CATALOG, list_models

log = logging.getLogger("quasar.export")


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def models(heavy: bool = True) -> str:
    """List the model catalogue: id, embedding dim, resolutions, heavy, local bundle; the
    default model (used without --bundle / --model) is marked with ``*``."""
    rows = []
    for mid in list_models(include_heavy=heavy):
        spec = CATALOG[mid]
        cached = (bundle_cache_dir(mid) / BUNDLE_JSON).is_file()
        rows.append([mid + (" *" if mid == DEFAULT_MODEL else ""), spec.family,
                     spec.embed_dim, ",".join(spec.resolutions), spec.default_resolution,
                     "yes" if spec.heavy else "", "yes" if cached else ""])
    table = _table(rows, ["model", "family", "dim", "resolutions", "default", "heavy", "bundle"])
    print(table)
    print("\n* the default model: used when no --bundle / --model is given")
    notes = [f"{mid}: {CATALOG[mid].resolution_note}." for mid in list_models(include_heavy=heavy)
             if CATALOG[mid].resolution_note]
    if notes:
        print("\nDefault resolution:\n" + "\n".join(notes))
    return None


def export(model: str, out: Optional[str] = None, checkpoint: Optional[str] = None,
           random_init: bool = False, seed: int = 0, overwrite: bool = False,
           exporter: str = "auto", quiet: bool = False) -> None:
    """Export MODEL to a verified ONNX bundle (default: the QUASAR bundle cache); prints
    its path. Raises QuasarError subclasses (unknown model, bad checkpoint, failed parity).
    Options: quasar/commands/export.py (values arrive parsed and checked).
    """
    from quasar.models.catalog import get_model_spec

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("quasar").setLevel(logging.WARNING if quiet else logging.INFO)
    spec = get_model_spec(model)  # fail fast on unknown ids, before importing torch
    target = Path(out).expanduser() if out else bundle_cache_dir(spec.id)
    log.info("exporting %s -> %s", spec.id, target)
    from .bundle import export_bundle

    path = export_bundle(spec.id, target, checkpoint=checkpoint, random_init=random_init,
                         seed=seed, overwrite=overwrite, exporter=exporter)
    print(path)
