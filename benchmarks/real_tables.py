"""Real tables as users hold them: id, time, code and free-text columns beside the features.

    .venv/bin/python benchmarks/real_tables.py

(a) An HMDA-like clean batch with an ``application_id``, a ``received`` timestamp, a ``zip``
    code with leading zeros, a ``product`` category and a free-text ``comment``: the share of its
    rows quarantined, drift alarms naming the id or time column, and whether every output cell
    equals its input cell (accepted.parquet + quarantined.parquet against the CSV's text).
(b) The same batch with 3 repeated ids, 2 rows dated next year and 5 rows with a product never
    seen: which rows are held and why, and whether anything else changed.
(c) The six datasets of ../shared/datasets, written raw to CSV (strings, categories, missing
    values), scanned with and without an id and a time column: the same rows held?

Each scan runs ``pipeline.scan``'s own steps on files (an inferred suite and roles, validation,
the default detectors, batch checks, the verdict, the decisions, the written outputs).
Writes benchmarks/real_tables.json and its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
RESULT_JSON = REPO / "benchmarks" / "real_tables.json"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
SHARED = REPO.parent / "shared" / "datasets"
ZIPS = ["00501", "02134", "02139", "02215", "01002", "90210", "10001", "07030"]
PRODUCTS = ["fixed30", "fixed15", "arm5", "jumbo"]
ATTACKS = ("clean", "random_flip_10", "duplicate_flood", "outliers")


def hmda_like(rows: pd.DataFrame, first_id: int, newest: pd.Timestamp, days: int, rng) -> pd.DataFrame:
    """HMDA rows with the columns a real application table also has."""
    n = len(rows)
    table = rows.reset_index(drop=True).copy()
    table.insert(0, "application_id", [str(first_id + i) for i in range(n)])  # 20 digits, beyond int64
    minutes = np.sort(rng.integers(0, days * 24 * 60, size=n))[::-1]
    table["received"] = [(newest - pd.Timedelta(minutes=int(m))).strftime("%Y-%m-%dT%H:%M:%SZ") for m in minutes]
    table["zip"] = rng.choice(ZIPS, size=n)
    table["product"] = rng.choice(PRODUCTS, size=n, p=[0.5, 0.25, 0.15, 0.10])
    words = np.array(["called", "about", "the", "tax", "return", "income", "letter", "title", "appraisal", "late"])
    table["comment"] = [" ".join(rng.choice(words, size=int(rng.integers(4, 12)))) for _ in range(n)]
    return table


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.drop(columns=["row_number"], errors="ignore").to_csv(path, index=False)


def csv_text(path: Path) -> pa.Table:
    """The file's cells as text, exactly as written (an unquoted empty cell: missing)."""
    names = pacsv.read_csv(path).schema.names
    return pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def cells_equal(out: Path, source: Path) -> dict:
    """Every cell of accepted + quarantined against the CSV's own text: a typed output column
    counts as equal only when one writer (Arrow's, or Python's repr) gives back every cell."""
    text = csv_text(source)
    parts = [pq.read_table(out / name) for name in ("accepted.parquet", "quarantined.parquet")]
    compared, differing = 0, []
    for name in text.schema.names:
        for part in parts:
            if not part.num_rows:
                continue
            rows = part["row_number"].to_numpy()
            expected = text[name].take(pa.array(rows)).to_pylist()
            got = part[name]
            writers = (
                [got.to_pylist()]
                if pa.types.is_string(got.type)
                else [pc.cast(got, pa.string()).to_pylist(), [None if v is None else repr(v) for v in got.to_pylist()]]
            )
            if not any(w == expected for w in writers):
                bad = next(i for i, (a, b) in enumerate(zip(writers[0], expected)) if a != b)
                differing.append({"column": name, "row": int(rows[bad]), "input": expected[bad], "output": writers[0][bad]})
            compared += len(expected)
    return {"cells_compared": compared, "columns_differing": differing, "every_cell_equal": not differing}


class Scanner:
    """``pipeline.scan``'s steps on files, fitted once on a reference."""

    def __init__(self, folder: Path, label: str, reference: Path, holdout: Path | None = None, roles: tuple = ()) -> None:
        from pipeline import scan
        from pipeline.config import Settings

        self.folder = folder
        self.settings = Settings.from_environment(
            folder / "workspace", {"POISONGUARD_FIT_CACHE": "off", "POISONGUARD_USER": "benchmark"}
        )
        self.request = scan.ScanRequest(
            batch=folder / "batch.csv",
            reference=reference,
            label=label,
            out=folder / "out",
            holdout=holdout,
            dataset="benchmark",
            roles=roles,
        )
        started = time.perf_counter()
        self.trusted = scan.load_trusted(self.request, self.settings)
        self.detectors = scan.fit_detectors(self.trusted, self.settings)
        self.checks = scan.fit_checks(self.trusted)
        self.fit_seconds = time.perf_counter() - started

    def __call__(self, batch: Path, out: Path) -> dict:
        import dataclasses

        from pipeline import scan
        from pipeline.io import ROW_NUMBER
        from pipeline.scan_run import evaluate
        from pipeline.store import write_outputs

        request = dataclasses.replace(self.request, batch=batch, out=out)
        loaded = scan.ingest(request, self.settings)
        judged = evaluate(loaded, self.trusted, self.settings, detectors=self.detectors, checks=self.checks)
        verdict = judged.verdict
        outputs = scan.build_outputs(
            request,
            self.settings,
            loaded,
            self.trusted,
            judged.conformed,
            judged.outcome,
            judged.decisions,
            [],
            judged.checks,
            np.array([]),
            "benchmark",
            scan.now(),
            verdict,
        )
        write_outputs(outputs, out)
        table = judged.decisions.table.set_index(ROW_NUMBER).sort_index()
        held = table.index[table["quarantined"].to_numpy(bool)].to_numpy()
        reasons = {int(r): list(table.at[r, "reasons"]) for r in held}
        return {
            "rows": int(len(table)),
            "held": [int(r) for r in held],
            "reasons": reasons,
            "alarms": outputs.summary["alarms"],
            "verdict": verdict.as_dict()["headline"],
            "poisoned": bool(verdict.poisoned),
            "roles": outputs.summary["roles"],
        }


def drift_columns(alarms: list[dict]) -> list[str]:
    named = []
    for alarm in alarms:
        if alarm["check"] == "drift":
            named += [str(d.get("column")) for d in alarm.get("details", []) if d.get("column")]
            named += re.findall(r"'([^']+)'", alarm["message"])
    return named


def part_a_b(folder: Path) -> dict:
    rng = np.random.default_rng(7)
    frame = pd.read_parquet(SHARED / "hmda.parquet").sample(frac=1.0, random_state=7).reset_index(drop=True)
    now = pd.Timestamp.now(tz="UTC").floor("min")
    reference = hmda_like(frame.iloc[:1700], 10**19, now - pd.Timedelta(days=40), 700, rng)
    batch = hmda_like(frame.iloc[1700:2000], 10**19 + 5000, now - pd.Timedelta(hours=1), 30, rng)
    write_csv(reference, folder / "reference.csv")
    clean = folder / "batch_clean.csv"
    write_csv(batch, clean)
    scanner = Scanner(folder, "deny", folder / "reference.csv")
    a = scanner(clean, folder / "out_clean")
    a["cells"] = cells_equal(folder / "out_clean", clean)

    # the same rows without the added columns: the detectors' own rate on this batch
    plain = folder / "plain"
    plain.mkdir()
    added = ["application_id", "received", "zip", "product", "comment"]
    write_csv(reference.drop(columns=added), plain / "reference.csv")
    write_csv(batch.drop(columns=added), plain / "batch.csv")
    baseline = Scanner(plain, "deny", plain / "reference.csv")(plain / "batch.csv", plain / "out")
    a["held_without_added_columns"] = baseline["held"]

    bad = batch.copy()
    picked = rng.choice(np.arange(20, len(bad)), size=10, replace=False)
    repeated, future, unseen = picked[:3], picked[3:5], picked[5:]
    bad.loc[repeated[0], "application_id"] = reference["application_id"].iloc[5]  # an id already trusted
    bad.loc[repeated[1:], "application_id"] = bad["application_id"].iloc[[0, 1]].to_numpy()  # repeats in the batch
    next_year = now + pd.DateOffset(years=1)
    bad.loc[future, "received"] = next_year.strftime("%Y-%m-%dT%H:%M:%SZ")
    bad.loc[unseen, "product"] = "balloon"
    planted = folder / "batch_planted.csv"
    write_csv(bad, planted)
    b = scanner(planted, folder / "out_planted")
    b["cells"] = cells_equal(folder / "out_planted", planted)
    expected = {
        **{int(r): "duplicate_id" for r in repeated},
        **{int(r): "future" for r in future},
        **{int(r): "product" for r in unseen},
    }
    found = {}
    for row, kind in expected.items():
        reasons = b["reasons"].get(row, [])
        key = {"duplicate_id": "application_id=", "future": "in the future", "product": "product="}[kind]
        found[row] = {
            "planted": kind,
            "held": row in b["reasons"],
            "right_reason": any(key in r for r in reasons),
            "reasons": reasons,
        }
    others_a = sorted(set(a["held"]))
    others_b = sorted(set(b["held"]) - set(expected))
    return {
        "a": {
            "rows": a["rows"],
            "quarantined": len(a["held"]),
            "quarantine_rate": len(a["held"]) / a["rows"],
            "held_reasons": a["reasons"],
            "alarms": [x["message"] for x in a["alarms"]],
            "held_without_added_columns": a["held_without_added_columns"],
            "quarantined_without_added_columns": len(a["held_without_added_columns"]),
            "drift_alarm_on_id_or_time": bool({"application_id", "received"} & set(drift_columns(a["alarms"]))),
            "verdict": a["verdict"],
            "roles": a["roles"],
            "outputs": a["cells"],
        },
        "b": {
            "planted": found,
            "all_planted_held_with_right_reason": all(v["held"] and v["right_reason"] for v in found.values()),
            "other_rows_held": others_b,
            "other_rows_held_in_clean_run": others_a,
            "nothing_else_changed": others_a == others_b,
            "verdict": b["verdict"],
            "alarms": [x["message"] for x in b["alarms"]],
            "outputs": b["cells"],
        },
        "fit_seconds": scanner.fit_seconds,
    }


def part_c(folder: Path) -> list[dict]:
    from detection_core import DATASETS, attack, split

    results = []
    for name in [d for d in DATASETS if d != "data_samples"]:
        s = split(name, seed=0)
        label = s.spec.label
        protected = tuple(c for c in s.reference.columns if c not in (*s.spec.features, label, "row_number"))
        batches = {kind: attack(kind, s, np.random.default_rng(1)) for kind in ATTACKS}
        figures = {}
        for variant in ("without", "with"):
            where = folder / f"{name}-{variant}"
            where.mkdir()
            extra = variant == "with"
            parts = {"reference": s.reference, "holdout": s.holdout}
            start = 10**7
            for part, frame in parts.items():
                write_csv(with_id_time(frame, start, 400) if extra else frame, where / f"{part}.csv")
                start += len(frame)
            roles = tuple((c, "protected") for c in protected)
            scanner = Scanner(where, label, where / "reference.csv", where / "holdout.csv", roles=roles)
            for kind, (batch, poison) in batches.items():
                path = where / f"{kind}.csv"
                write_csv(with_id_time(batch, start, 2) if extra else batch, path)
                result = scanner(path, where / f"out-{kind}")
                held = np.zeros(result["rows"], dtype=bool)
                held[result["held"]] = True
                figures.setdefault(kind, {})[variant] = {
                    "rows": result["rows"],
                    "quarantined": int(held.sum()),
                    "quarantine_rate": float(held.mean()),
                    "poisoned_rows": int(poison.sum()),
                    "true_positives": int((held & poison).sum()),
                    "verdict_poisoned": result["poisoned"],
                    "held": result["held"],
                    "roles": result["roles"],
                }
                start += len(batch)
        for kind, pair in figures.items():
            results.append(
                {
                    "dataset": name,
                    "attack": kind,
                    "same_rows_held": pair["with"]["held"] == pair["without"]["held"],
                    "same_verdict": pair["with"]["verdict_poisoned"] == pair["without"]["verdict_poisoned"],
                    **{
                        f"{v}_{k}": pair[v][k]
                        for v in ("without", "with")
                        for k in ("quarantined", "quarantine_rate", "true_positives", "verdict_poisoned")
                    },
                    "poisoned_rows": pair["with"]["poisoned_rows"],
                    "roles_with": {c: r for c, r in pair["with"]["roles"].items() if r in ("id", "time")},
                }
            )
        print(
            f"{name}: "
            + ", ".join(f"{k} {figures[k]['without']['quarantined']}/{figures[k]['with']['quarantined']}" for k in figures),
            flush=True,
        )
    return results


def with_id_time(frame: pd.DataFrame, first_id: int, days: int) -> pd.DataFrame:
    """``frame`` with a ``record_id`` (increasing integers) and a ``created_at`` timestamp in the
    last ``days`` days."""
    rng = np.random.default_rng(first_id)
    out = frame.reset_index(drop=True).copy()
    out.insert(0, "record_id", np.arange(first_id, first_id + len(out)))
    newest = pd.Timestamp.now(tz="UTC").floor("min") - pd.Timedelta(hours=1)
    minutes = np.sort(rng.integers(0, days * 24 * 60, size=len(out)))[::-1]
    out["created_at"] = [(newest - pd.Timedelta(minutes=int(m))).isoformat() for m in minutes]
    return out


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="real-tables-") as tmp:
        folder = Path(tmp)
        (folder / "ab").mkdir()
        ab = part_a_b(folder / "ab")
        print(
            json.dumps({k: ab["a"][k] for k in ("quarantined", "quarantine_rate", "drift_alarm_on_id_or_time")}), flush=True
        )
        print(
            json.dumps(
                {k: ab["b"][k] for k in ("all_planted_held_with_right_reason", "nothing_else_changed", "other_rows_held")}
            ),
            flush=True,
        )
        (folder / "c").mkdir()
        c = part_c(folder / "c")
    record = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "note": "2 cores shared with other work"},
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "seconds": round(time.perf_counter() - started, 1),
        "hmda_like": ab,
        "datasets": c,
    }
    RESULT_JSON.write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_section(record)


def write_section(record: dict) -> None:
    a, b = record["hmda_like"]["a"], record["hmda_like"]["b"]
    lines = [
        "## Real tables: id, time, code and free-text columns (benchmarks/real_tables.py)",
        "",
        f"{record['date']}, {record['machine']['cores']} cores (shared), {record['seconds']:.0f} s. "
        "Each scan runs `pipeline.scan`'s steps on CSV files with an inferred suite and inferred roles.",
        "",
        f"- (a) HMDA-like clean batch of {a['rows']} rows with a 20-digit `application_id`, a `received` "
        "timestamp, a leading-zero `zip`, a `product` category and a free-text `comment`: "
        f"**{a['quarantined']} quarantined ({100 * a['quarantine_rate']:.1f} %)**, drift alarm on id/time: "
        f"{'yes' if a['drift_alarm_on_id_or_time'] else 'no'} (the same rows without the added columns: "
        f"{a['quarantined_without_added_columns']} held, by the detectors' own per-row rate); every output cell "
        "equal to its input cell: "
        f"**{a['outputs']['every_cell_equal']}** ({a['outputs']['cells_compared']:,} cells). Roles inferred: "
        + ", ".join(f"`{c}` {r}" for c, r in a["roles"].items() if r not in ("feature",))
        + "; `zip` and `product` are categorical features (a code written with leading zeros is no quantity).",
        f"- (b) the same batch with 3 repeated ids, 2 rows dated next year, 5 rows with an unseen product: "
        f"all 10 held with the right reason: **{b['all_planted_held_with_right_reason']}**; other rows held "
        f"{b['other_rows_held']} (clean run: {b['other_rows_held_in_clean_run']}); nothing else changed: "
        f"**{b['nothing_else_changed']}**; every output cell equal: {b['outputs']['every_cell_equal']}. The batch "
        f'verdict counts the 10 as invalid records: "{b["verdict"]}" (clean run: "{a["verdict"]}").',
        "- (c) the six datasets written raw to CSV, scanned with and without a `record_id` and a `created_at` "
        "column (one split, seed 0; same attacks as detection_core):",
        "",
        "| dataset | attack | held without | held with | poisoned | caught without | caught with | same rows held |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["datasets"]:
        lines.append(
            f"| {r['dataset']} | {r['attack']} | {r['without_quarantined']} | {r['with_quarantined']} | "
            f"{r['poisoned_rows']} | {r['without_true_positives']} | {r['with_true_positives']} | "
            f"{'yes' if r['same_rows_held'] else 'NO'} |"
        )
    same = sum(r["same_rows_held"] for r in record["datasets"])
    lines += ["", f"Same rows held in {same} of {len(record['datasets'])} cases.", ""]
    section = "\n".join(lines)
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    start = text.find("## Real tables: id, time")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS_MD.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--section-only"]:  # rewrite RESULTS.md's section from real_tables.json
        write_section(json.loads(RESULT_JSON.read_text()))
    else:
        main()
