"""The detection-core section of RESULTS.md, built from a ``detection_core.json.gz`` record: per
dataset and attack, the batch verdict (how often a batch is called poisoned, how often the
estimate's interval holds the true count) and the rows held, beside the best peer's.

    python benchmarks/detection_tables.py [benchmarks/detection_core.json.gz]   # prints the section
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

OURS = "poisonguard"


def read_record(path: Path) -> dict:
    """A benchmark record, gzipped when its name ends in .gz (20 seeds of every case: 7 MB of JSON)."""
    data = path.read_bytes()
    return json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)


def write_record(path: Path, record: dict, default=None) -> None:
    text = (json.dumps(record, indent=0, default=default) + "\n").encode()
    path.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def verdict_table(rows: list[dict]) -> list[str]:
    """One line per dataset and attack: poisonguard's verdict and held rows, mean over seeds."""
    cases = defaultdict(list)
    for row in rows:
        if row["method"] == OURS and "_subsample" not in row["attack"]:
            cases[(row["dataset"], row["attack"])].append(row)
    lines = [
        "| dataset | attack | seeds | rows | poisoned rows | called poisoned | interval holds truth | "
        "estimate | held | recall | precision | F1 | clean rows held | AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, attack), found in sorted(cases.items()):
        poisoned = found[0]["poisoned"]
        lines.append(
            f"| {dataset} | {attack} | {len(found)} | {_fmt(_mean(r['rows'] for r in found), 0)} | "
            f"{_fmt(_mean(r['poisoned'] for r in found), 0)} | {_pct(_mean(float(r['verdict_poisoned']) for r in found))} | "
            f"{_pct(_mean(float(r['covered']) for r in found)) if poisoned else '–'} | "
            f"{_fmt(_mean(r['estimate'] for r in found), 1)} | {_fmt(_mean(r['flagged'] for r in found), 1)} | "
            f"{_fmt(_mean(r.get('recall') for r in found))} | {_fmt(_mean(r.get('precision') for r in found))} | "
            f"{_fmt(_mean(r.get('f1') for r in found))} | {_pct(_mean(r.get('false_quarantine') for r in found))} | "
            f"{_fmt(_mean(r.get('auroc') for r in found))} |"
        )
    return lines


def peer_table(rows: list[dict]) -> list[str]:
    """Per attack (all datasets pooled, by seed-mean per dataset): F1 and clean rows held of each
    method at the hold it applies, ours and its hold variants beside the peers."""
    by = defaultdict(list)
    for row in rows:
        if "_subsample" in row["attack"] or (row.get("f1") is None and row["attack"] not in ("clean", "covariate_shift")):
            continue
        by[(row["attack"], row["method"])].append(row)
    attacks = sorted({a for a, _ in by})
    methods = sorted({m for _, m in by}, key=lambda m: (not m.startswith(OURS), m))
    lines = ["| attack | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for attack in attacks:
        cells = []
        for method in methods:
            found = by.get((attack, method), [])
            if not found:
                cells.append("–")
            elif attack in ("clean", "covariate_shift"):
                cells.append(f"held {_pct(_mean(r.get('false_quarantine') for r in found))}")
            else:
                cells.append(
                    f"F1 {_fmt(_mean(r.get('f1') for r in found))} / clean held "
                    f"{_pct(_mean(r.get('false_quarantine') for r in found))}"
                )
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return lines


def _peers_note(record: dict) -> str:
    if not any(not r["method"].startswith(OURS) for r in record["rows"]):
        return "not in this run"
    return "rerun" if record.get("peers_rerun") else "kept from the previous run"


def detection_section(record: dict, begin: str, end: str) -> str:
    rows = record["rows"]
    ours = [r for r in rows if r["method"] == OURS]
    holdout = _mean(r.get("holdout_held_share") for r in ours)
    head = [
        begin,
        "",
        f"Run {record['date']} on {record['machine']}: {record['seeds']} seed(s) per dataset and attack, "
        f"{record['minutes']} min; peers {_peers_note(record)}. "
        f"Trusted holdout rows held at the product's threshold: {_pct(holdout)} (target 1 %).",
        "",
        "### The batch verdict and the rows held (poisonguard, default policy)",
        "",
    ]
    peers = any(not r["method"].startswith(OURS) for r in rows)
    title = (
        "### Against the peers, at the hold each applies"
        if peers
        else "### The ways of holding a significant kind's rows, side by side (peers not in this run)"
    )
    return "\n".join([*head, *verdict_table(rows), "", title, "", *peer_table(rows), "", end])


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("detection_core.json.gz")
    print(detection_section(read_record(path), "<!-- detection-core:begin -->", "<!-- detection-core:end -->"))
