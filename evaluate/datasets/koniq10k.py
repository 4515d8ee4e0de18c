"""KonIQ-10k: 10,073 in-the-wild images, MOS and MOS z-score, official train/val/test split."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from quasar.errors import DatasetError

from ._common import (
    DatasetInfo,
    canonical_split,
    check_root,
    make_samples,
    malformed,
    parse_float,
    read_csv_table,
    resolve_subset,
)
from .base import DatasetSamples

COMBINED = "koniq10k_scores_and_distributions.csv"
SCORES = "koniq10k_scores.csv"
SETS = "koniq10k_distributions_sets.csv"
KEY = "image_name"
SPLIT = "set"
SCORE_COLUMNS = ("MOS_zscore", "MOS")
RESOLUTIONS = ("1024x768", "512x384")

INFO = DatasetInfo(
    name="KonIQ10k",
    url="http://database.mmsp-kn.de/koniq-10k-database.html",
    role="target",
    subsets=("test", "train", "validation", "all"),
    default_subset="test",
    score="MOS z-score (default) or MOS 1..5",
    higher_is_better=True,
    layout=(
        f"{SETS} (columns {KEY}, ..., {SPLIT} = training|validation|test) with {SCORES} "
        f"(columns {KEY}, MOS, MOS_zscore), or {COMBINED}",
        "1024x768/<image_name> (or 512x384/ with resolution='512x384')",
    ),
)


def load(
    root,
    subset: Optional[str] = None,
    *,
    score: str = "MOS_zscore",
    resolution: str = "1024x768",
    check_files: bool = True,
) -> DatasetSamples:
    """Read KonIQ-10k.

    Rows come in the order of ``COMBINED`` if present, else ``SCORES`` (the reference reads
    ``COMBINED`` alone, else ``SCORES`` merged with ``SETS``). The score column is taken from
    those two files only: the ``MOS`` column of ``SETS`` is on the 0..100 z-score scale. The
    ``set`` split column is joined by ``image_name`` from the first file that has it (``SETS``
    in the release). Split values ``training``/``validation``/``test`` map to the subsets
    ``train``/``validation``/``test`` (the reference compares with ``"train"`` and so finds
    no training rows).
    """
    subset = resolve_subset(INFO, subset)
    if score not in SCORE_COLUMNS:
        raise DatasetError(
            f"KonIQ10k: unknown score column {score!r}; choose one of {list(SCORE_COLUMNS)}."
        )
    if resolution not in RESOLUTIONS:
        raise DatasetError(
            f"KonIQ10k: unknown resolution {resolution!r}; choose one of {list(RESOLUTIONS)} "
            "(the folders of the two image archives)."
        )
    root = check_root(INFO, root)
    score_files = [root / f for f in (COMBINED, SCORES) if (root / f).is_file()]
    if not score_files:
        sets_note = (
            f" ({SETS} is present, but its 'MOS' column is on another scale than {SCORES}'s "
            "MOS; download the scores from the KonIQ-10k database page)"
            if (root / SETS).is_file()
            else ""
        )
        raise DatasetError(
            f"KonIQ10k: no score file under {root}: expected {COMBINED} or {SCORES} "
            f"(and {SETS} for the train/validation/test split){sets_note}. {INFO.where()}."
        )
    files = score_files + ([root / SETS] if (root / SETS).is_file() else [])
    tables = [(path, *read_csv_table(INFO, path)) for path in files]
    for path, header, _ in tables:
        if KEY not in header:
            raise malformed(INFO, path, f"missing column {KEY!r}; found {header}")

    columns: Dict[str, Tuple[Path, Dict[str, str]]] = {}
    wanted = [(score, tables[: len(score_files)])]
    if subset != "all":
        wanted.append((SPLIT, tables))
    for col, candidates in wanted:
        source = next(((p, h, r) for p, h, r in candidates if col in h), None)
        if source is None:
            searched = ", ".join(str(p) for p, _, _ in candidates)
            hint = (
                f"the split column {SPLIT!r} is in {SETS} (KonIQ-10k metadata); put it next "
                f"to the scores, or use subset='all'"
                if col == SPLIT
                else f"score columns are {list(SCORE_COLUMNS)}"
            )
            raise DatasetError(f"KonIQ10k: no column {col!r} in {searched}; {hint}. {INFO.where()}.")
        path, header, rows = source
        j, k = header.index(KEY), header.index(col)
        columns[col] = (path, {row[j]: row[k] for row in rows})
    needed = [col for col, _ in wanted]

    primary_path, header, rows = tables[0]
    names: List[str] = [row[header.index(KEY)] for row in rows]
    paths, scores = [], []
    for name in names:
        values = {}
        for col in needed:
            source, mapping = columns[col]
            if name not in mapping:
                raise malformed(
                    INFO, source, f"no row for image {name!r} listed in {primary_path.name}"
                )
            values[col] = mapping[name]
        if subset != "all" and canonical_split(values[SPLIT]) != subset:
            continue
        paths.append(root / resolution / name)
        scores.append(parse_float(INFO, columns[score][0], values[score], f"image {name}"))
    return make_samples(INFO, subset, root, paths, scores, check_files=check_files)
