"""Draw the bundled IMDB sample (src/sentilora/resources/imdb_sample) from the project's parquet copy.

Run from the repository root: ``python bench/make_imdb_sample.py``. Deterministic: the same
seed and source files always give byte-identical rows in the same order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20261122
ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "imdb"
DEST = ROOT / "src" / "sentilora" / "resources" / "imdb_sample"
PER_CLASS = {"train": 500, "test": 250}
COLUMNS = ["text", "label", "rating", "id"]


def balanced_sample(df: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """`per_class` rows of each label, shuffled together (not grouped by class)."""
    parts = [g.sample(n=per_class, random_state=seed) for _, g in df.groupby("label", sort=True)]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--dest", type=Path, default=DEST)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("text", pa.string()), ("label", pa.int64()), ("rating", pa.int64()), ("id", pa.int64())])
    for split, n in PER_CLASS.items():
        df = pd.read_parquet(args.source / f"{split}.parquet", columns=COLUMNS)
        out = balanced_sample(df, n, args.seed)
        out["label"] = out["label"].astype("int64")
        table = pa.Table.from_pandas(out, schema=schema, preserve_index=False)
        path = args.dest / f"{split}.parquet"
        pq.write_table(table, path, compression="zstd", compression_level=19)
        counts = out["label"].value_counts().sort_index().to_dict()
        print(f"{path.relative_to(ROOT)}: {len(out)} rows {counts}, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
