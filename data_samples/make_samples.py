"""Build poisonguard's committed sample data from the Boston HMDA dataset.

Why this exists: the pipeline, its tests and its benchmarks need a small,
realistic, *labelled* set of incoming training batches -- some clean, some
poisoned in known ways -- plus a trusted reference and holdout to compare them
against. Everything here is derived deterministically (fixed numpy seed, no
network) from ``hmda.parquet`` so anyone can regenerate byte-identical files:

    .venv/bin/python data_samples/make_samples.py

Outputs (written next to this script unless ``--out`` is given):

    reference.parquet                    trusted training data
    holdout.parquet                      trusted validation set
    batch_01_clean.csv                   clean incoming batch
    batch_02_label_flips.csv             random + targeted label flips
    batch_03_impossible_and_outliers.csv impossible records and joint outliers
    batch_04_extra_column.csv            unexpected extra column
    batch_05_clean.parquet               clean incoming batch (Parquet)
    ground_truth.csv                     one line per poisoned row

Source: Munnell et al. (1996), Boston HMDA data, as distributed in the R
package AER (``HMDA``). See README.md in this folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20240611
HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hmda.parquet"

EXPECTED_COLUMNS = [
    "deny",
    "pirat",
    "hirat",
    "lvrat",
    "chist",
    "mhist",
    "phist",
    "unemp",
    "selfemp",
    "insurance",
    "condomin",
    "afam",
    "single",
    "hschool",
]
FLOAT_COLUMNS = ["pirat", "hirat", "lvrat", "unemp"]
INT_COLUMNS = ["chist", "mhist"]

N_REFERENCE = 1400
N_HOLDOUT = 400
N_BATCH_01 = 140
N_BATCH_02 = 140
N_BATCH_03 = 140
N_BATCH_04 = 120
MIN_BATCH_05 = 30

N_FLIP_RANDOM = 28
N_FLIP_TARGETED = 12
TARGETED_MIN_CHIST = 5
N_PLANTED_IMPOSSIBLE = 6
N_OUTLIERS = 6

B1, B2, B3, B4, B5 = (
    "batch_01_clean.csv",
    "batch_02_label_flips.csv",
    "batch_03_impossible_and_outliers.csv",
    "batch_04_extra_column.csv",
    "batch_05_clean.parquet",
)


# --------------------------------------------------------------------------- loading / splitting


def load_source(path: Path) -> pd.DataFrame:
    """Read the HMDA parquet and fail loudly if it is not the file we expect.

    The index of the returned frame is the source row number; it is carried
    through every step (never written) so the script can check each output row
    against the row it came from.
    """
    df = pd.read_parquet(path)
    assert list(df.columns) == EXPECTED_COLUMNS, f"unexpected columns: {list(df.columns)}"
    assert len(df) == 2380, f"expected 2,380 rows, got {len(df)}"
    return df.reset_index(drop=True)


def set_aside_natural_impossible(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove the real rows with hirat > pirat.

    Housing expense is part of total debt payments, so hirat > pirat is a
    genuine integrity violation in the source. Those rows must never be in the
    trusted reference/holdout; they become real-world "impossible" examples in
    batch 03 instead.
    """
    bad = df["hirat"] > df["pirat"]
    return df[bad], df[~bad]


def shuffle(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Return the rows in a random (seeded) order, keeping the source index."""
    return df.iloc[rng.permutation(len(df))]


class Pool:
    """Hands out consecutive, non-overlapping slices of the shuffled rows."""

    def __init__(self, df: pd.DataFrame):
        self.df = df
        self.pos = 0

    def take(self, n: int) -> pd.DataFrame:
        assert self.pos + n <= len(self.df), "not enough rows left in the pool"
        out = self.df.iloc[self.pos : self.pos + n].copy()
        self.pos += n
        return out

    def rest(self) -> pd.DataFrame:
        return self.take(len(self.df) - self.pos)


def numeric_ranges(reference: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Observed min/max of each numeric column in the trusted reference."""
    return {c: (reference[c].min(), reference[c].max()) for c in FLOAT_COLUMNS + INT_COLUMNS}


# --------------------------------------------------------------------------- poisoning recipes
# Each recipe mutates a copy of clean rows and returns {source_row: (attack, detail)}.


def flip(label: str) -> str:
    return {"yes": "no", "no": "yes"}[label]


def poison_label_flips(batch: pd.DataFrame, rng: np.random.Generator) -> dict:
    """Flip 12 targeted and 28 random `deny` labels (40 of 140: see README.md for why).

    Targeted: an attacker wants bad-credit applicants approved, so pick rows
    labelled deny=yes with chist >= 5 and flip them to "no". If the batch holds
    fewer than 12 of those, fall back to the deny=yes rows with the highest chist.
    Random: 28 other rows flipped in whichever direction, the untargeted noise
    a careless or malicious labeller produces.
    """
    gt = {}
    yes = batch[batch["deny"] == "yes"]
    high = yes[yes["chist"] >= TARGETED_MIN_CHIST]
    if len(high) >= N_FLIP_TARGETED:
        targeted = rng.choice(high.index.to_numpy(), N_FLIP_TARGETED, replace=False)
    else:  # highest chist first, random order among ties
        tiebreak = pd.Series(rng.random(len(yes)), index=yes.index)
        order = pd.DataFrame({"chist": yes["chist"], "r": tiebreak}).sort_values(["chist", "r"], ascending=[False, True])
        targeted = order.index[:N_FLIP_TARGETED].to_numpy()
    assert len(targeted) == N_FLIP_TARGETED, "not enough deny=yes rows to target"
    for i in targeted:
        batch.loc[i, "deny"] = "no"
        gt[i] = ("label_flip_targeted", f"deny yes->no (chist={batch.loc[i, 'chist']})")

    others = batch.index.difference(pd.Index(targeted)).to_numpy()
    for i in rng.choice(others, N_FLIP_RANDOM, replace=False):
        old = batch.loc[i, "deny"]
        batch.loc[i, "deny"] = flip(old)
        gt[i] = ("label_flip_random", f"deny {old}->{flip(old)}")
    return gt


def plant_impossible(batch: pd.DataFrame, rows: np.ndarray) -> dict:
    """Give each chosen row exactly one value that cannot occur in valid data.

    One violation per row, each of a different kind, so a validation suite can
    be checked rule by rule: hirat > pirat, chist outside 1-6, negative lvrat,
    a 2500% payment-to-income ratio, negative unemployment, mhist outside 1-4.
    """
    assert len(rows) == N_PLANTED_IMPOSSIBLE
    gt = {}
    r = iter(rows)

    i = next(r)
    pirat = batch.loc[i, "pirat"]
    batch.loc[i, "hirat"] = round(float(pirat) + 0.65, 2)
    gt[i] = ("impossible", f"hirat {batch.loc[i, 'hirat']:.2f} > pirat {pirat:.2f}")

    i = next(r)
    batch.loc[i, "chist"] = 9
    gt[i] = ("impossible", "chist=9 (valid 1-6)")

    i = next(r)
    batch.loc[i, "lvrat"] = -round(float(batch.loc[i, "lvrat"]), 2)
    gt[i] = ("impossible", f"lvrat={batch.loc[i, 'lvrat']:.2f} (negative)")

    i = next(r)
    batch.loc[i, "pirat"] = 25.0
    gt[i] = ("impossible", "pirat=25 (2500% of income)")

    i = next(r)
    batch.loc[i, "unemp"] = -3.0
    gt[i] = ("impossible", "unemp=-3 (negative rate)")

    i = next(r)
    batch.loc[i, "mhist"] = 0
    gt[i] = ("impossible", "mhist=0 (valid 1-4)")
    return gt


def plant_outliers(batch: pd.DataFrame, rows: np.ndarray, ranges: dict, rng: np.random.Generator) -> dict:
    """Make joint outliers that no per-column range check can catch.

    Every value stays strictly inside the reference min/max of its column, but
    pirat, hirat, lvrat and unemp are all pushed to the top 3-8% of their range
    at once and the application is marked approved (deny=no) -- a combination
    far from any real applicant. hirat is kept below pirat so the rows do not
    also trip the hirat <= pirat integrity rule.
    """

    def near_max(col: str) -> float:
        lo, hi = ranges[col]
        return round(float(hi - rng.uniform(0.03, 0.08) * (hi - lo)), 3)

    gt = {}
    for i in rows:
        pirat = near_max("pirat")
        hirat = min(near_max("hirat"), round(pirat - 0.05, 3))
        lvrat, unemp = near_max("lvrat"), round(near_max("unemp"), 1)
        batch.loc[i, ["pirat", "hirat", "lvrat", "unemp"]] = [pirat, hirat, lvrat, unemp]
        batch.loc[i, "deny"] = "no"
        gt[i] = ("outlier", f"pirat {pirat:g}, hirat {hirat:g}, lvrat {lvrat:g}, unemp {unemp:g} all near max, deny=no")
    return gt


def add_referral_code(batch: pd.DataFrame, rng: np.random.Generator) -> dict:
    """Append a plausible-looking extra column that the schema does not allow.

    A "harmless" new column is how unvetted features sneak into training; the
    contract says the schema is closed, so every row of the batch is poisoned.
    """
    codes = rng.integers(0, 10_000, len(batch))
    batch["referral_code"] = pd.array([f"R-{c:04d}" for c in codes], dtype="str")
    return dict.fromkeys(batch.index, ("schema_extra_column", "extra column referral_code"))


# --------------------------------------------------------------------------- writing / verifying


def finalize(batch: pd.DataFrame, gt: dict, name: str, rng: np.random.Generator | None) -> tuple[pd.DataFrame, list]:
    """Optionally shuffle a batch and turn {source_row: ...} into row_number entries.

    Poisoned rows are shuffled in so that they are not bunched at the top.
    """
    if rng is not None:
        batch = shuffle(batch, rng)
    pos = {src: n for n, src in enumerate(batch.index)}
    rows = [dict(batch=name, row_number=pos[src], attack=a, detail=d, _src=src) for src, (a, d) in gt.items()]
    return batch, sorted(rows, key=lambda r: r["row_number"])


def write(df: pd.DataFrame, path: Path) -> None:
    """CSV with header and no index (floats via repr, so they round-trip), or Parquet.

    Parquet text columns are stored as Arrow ``string`` (as in the source file)
    rather than pandas 3's default ``large_string``, so the physical schema
    matches hmda.parquet and older readers are not surprised.
    """
    out = df.reset_index(drop=True)
    if path.suffix == ".csv":
        out.to_csv(path, index=False)
        return
    table = pa.Table.from_pandas(out, preserve_index=False)
    fields = [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema]
    pq.write_table(table.cast(pa.schema(fields, metadata=table.schema.metadata)), path)


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def check_rule(row: pd.Series, src: pd.Series, attack: str, ranges: dict) -> bool:
    """Does a re-read poisoned row really show the attack recorded for it?"""
    changed = [c for c in EXPECTED_COLUMNS if row[c] != src[c]]
    if attack in ("label_flip_random", "label_flip_targeted"):
        ok = changed == ["deny"]
        return ok and (attack == "label_flip_random" or (src["deny"] == "yes" and row["deny"] == "no"))
    if attack == "natural_impossible":
        return not changed and row["hirat"] > row["pirat"]
    if attack == "impossible":
        violations = [
            row["hirat"] > row["pirat"],
            not 1 <= row["chist"] <= 6,
            row["lvrat"] < 0,
            row["pirat"] >= 25,
            row["unemp"] < 0,
            not 1 <= row["mhist"] <= 4,
        ]
        return len(changed) == 1 and sum(violations) == 1
    if attack == "outlier":
        in_range = all(ranges[c][0] < row[c] < ranges[c][1] for c in FLOAT_COLUMNS)
        return in_range and row["deny"] == "no" and row["hirat"] <= row["pirat"]
    if attack == "schema_extra_column":
        return not changed and str(row["referral_code"]).startswith("R-")
    raise ValueError(attack)


def verify(out: Path, source_path: Path, source: pd.DataFrame, written: dict, truth: pd.DataFrame, ranges: dict) -> None:
    """Re-read every output and assert it says what the ground truth says.

    - each file re-reads identically (values, column order, dtypes);
    - every ground-truth row_number points at a row showing its attack;
    - every row *not* in the ground truth is byte-for-byte its source row;
    - Parquet outputs have the same Arrow column types as the source file.
    """
    ref_dtypes = source.dtypes
    source_types = pq.read_schema(source_path).types
    gt_file = pd.read_csv(out / "ground_truth.csv")
    assert list(gt_file.columns) == ["batch", "row_number", "attack", "detail"]
    assert gt_file.equals(truth.drop(columns="_src")), "ground_truth.csv does not re-read identically"

    for name, (df, src_ids) in written.items():
        back = read(out / name)
        assert back.equals(df.reset_index(drop=True)), f"{name} does not round-trip"
        assert back[EXPECTED_COLUMNS].dtypes.equals(ref_dtypes), f"{name}: dtypes changed"
        if name.endswith(".parquet"):
            assert pq.read_schema(out / name).types == source_types, f"{name}: Arrow types differ from source"
        if name == B4:
            assert list(back.columns) == [*EXPECTED_COLUMNS, "referral_code"]
        else:
            assert list(back.columns) == EXPECTED_COLUMNS
        gt = truth[truth["batch"] == name]
        assert (gt_file[gt_file["batch"] == name]["row_number"].to_numpy() == gt["row_number"].to_numpy()).all()
        poisoned = dict(zip(gt["row_number"], zip(gt["attack"], gt["_src"])))
        for n in range(len(back)):
            src = source.loc[src_ids[n]]
            if n in poisoned:
                attack, gt_src = poisoned[n]
                assert gt_src == src_ids[n], f"{name} row {n}: ground truth points at the wrong row"
                assert check_rule(back.iloc[n], src, attack, ranges), f"{name} row {n}: not a {attack}"
            else:
                assert back.iloc[n][EXPECTED_COLUMNS].equals(src), f"{name} row {n}: clean row was altered"


# --------------------------------------------------------------------------- main


def build(source_path: Path, out: Path) -> None:
    """Split, poison, write, verify, and print a summary."""
    rng = np.random.default_rng(SEED)
    source = load_source(source_path)
    natural, rest = set_aside_natural_impossible(source)

    pool = Pool(shuffle(rest, rng))
    reference = pool.take(N_REFERENCE)
    holdout = pool.take(N_HOLDOUT)
    ranges = numeric_ranges(reference)

    b1 = pool.take(N_BATCH_01)
    b2 = pool.take(N_BATCH_02)
    b3 = pool.take(N_BATCH_03 - len(natural))
    b4 = pool.take(N_BATCH_04)
    b5 = pool.rest()
    assert len(b5) >= MIN_BATCH_05, f"batch 05 would have only {len(b5)} rows"

    gt2 = poison_label_flips(b2, rng)

    chosen = rng.choice(b3.index.to_numpy(), N_PLANTED_IMPOSSIBLE + N_OUTLIERS, replace=False)
    gt3 = {
        i: ("natural_impossible", f"hirat {natural.loc[i, 'hirat']:.2f} > pirat {natural.loc[i, 'pirat']:.2f}")
        for i in natural.index
    }
    gt3 |= plant_impossible(b3, chosen[:N_PLANTED_IMPOSSIBLE])
    gt3 |= plant_outliers(b3, chosen[N_PLANTED_IMPOSSIBLE:], ranges, rng)
    b3 = pd.concat([b3, natural])

    gt4 = add_referral_code(b4, rng)

    outputs, truth_rows = {}, []
    for name, batch, gt, shuffled in [
        ("reference.parquet", reference, {}, False),
        ("holdout.parquet", holdout, {}, False),
        (B1, b1, {}, False),
        (B2, b2, gt2, True),
        (B3, b3, gt3, True),
        (B4, b4, gt4, True),
        (B5, b5, {}, False),
    ]:
        batch, rows = finalize(batch, gt, name, rng if shuffled else None)
        outputs[name] = (batch, batch.index.to_numpy())
        truth_rows += rows

    out.mkdir(parents=True, exist_ok=True)
    for name, (df, _) in outputs.items():
        write(df, out / name)
    truth = pd.DataFrame(truth_rows, columns=["batch", "row_number", "attack", "detail", "_src"])
    truth.drop(columns="_src").to_csv(out / "ground_truth.csv", index=False)

    verify(out, source_path, source, outputs, truth, ranges)
    summarize(outputs, truth, ranges)


def summarize(outputs: dict, truth: pd.DataFrame, ranges: dict) -> None:
    """Print what was written, so a regeneration can be eyeballed against README.md."""
    for name, (df, _) in outputs.items():
        print(f"{name:40s} {len(df):5d} rows")
    print("\nground truth:")
    print(truth.groupby(["batch", "attack"]).size().to_string())
    print("\nreference min/max:")
    for c, (lo, hi) in ranges.items():
        print(f"  {c:6s} min {lo.item()!r:<22} max {hi.item()!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="path to hmda.parquet")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this folder)")
    args = parser.parse_args()
    build(args.source, args.out)


if __name__ == "__main__":
    main()
