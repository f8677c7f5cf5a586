"""``poisonguard review …`` and ``poisonguard verify``: the steward's commands over the ledger."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from pipeline.config import Settings
from pipeline.errors import PoisonguardError
from pipeline.terminal import terminal_safe as safe

review_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Work through quarantined rows: list, show, release, reject."
)

WORKSPACE = typer.Option(None, "--workspace", help="State folder (default ./.poisonguard or $POISONGUARD_WORKSPACE).")


class Status(str, Enum):
    pending = "pending"
    released = "released"
    rejected = "rejected"
    accepted = "accepted"


class Format(str, Enum):
    table = "table"
    json = "json"


@review_app.command("list")
def list_rows(
    dataset: str | None = typer.Option(None, "--dataset", help="Only this dataset."),
    status: Status = typer.Option(Status.pending, "--status", help="Rows in this state."),
    output: Format = typer.Option(Format.table, "--format", help="table for people, json for scripts."),
    workspace: Path | None = WORKSPACE,
) -> None:
    """Rows awaiting review (or released/rejected/accepted ones), most suspect first."""
    from pipeline.anchor import open_ledger
    from pipeline.ledger.database import ledger_exists

    settings = Settings.from_environment(workspace)
    rows = []
    if ledger_exists(settings.database_url.get_secret_value()):  # a workspace never scanned has no rows
        with open_ledger(settings) as ledger:
            rows = sorted(ledger.list_rows(dataset=dataset, status=status.value), key=lambda r: (-r.suspicion, r.id))
    if output == Format.json:
        # json.dumps escapes control characters itself (and, with ensure_ascii, everything else)
        typer.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "dataset": r.dataset,
                        "status": r.status.value,
                        "suspicion": r.suspicion,
                        "reasons": list(r.reasons),
                    }
                    for r in rows
                ],
                indent=1,
            )
        )
        return
    if not rows:
        typer.echo(f"No {status.value} rows" + (f" in dataset '{safe(dataset)}'." if dataset else "."))
        return
    typer.echo(f"{'id':<20} {'dataset':<14} {'suspicion':>9}  first reason")
    for r in rows:
        reason = r.reasons[0] if r.reasons else ""
        typer.echo(f"{safe(r.id):<20} {safe(r.dataset):<14} {r.suspicion:9.4f}  {safe(reason[:100])}")
    typer.echo(f"{len(rows)} {status.value} row(s).")


@review_app.command()
def show(
    row_id: str = typer.Argument(..., help="A row id (batch:row) or a batch id."),
    workspace: Path | None = WORKSPACE,
) -> None:
    """One row with its reasons, scores and nearest trusted neighbours; or one batch's counts."""
    from pipeline.review import batch_summary, open_ledger, row_detail

    settings = Settings.from_environment(workspace)
    with open_ledger(settings) as ledger:
        if ":" not in row_id:
            b = ledger.get_batch(row_id)
            typer.echo(
                f"batch {safe(b.id)}  {safe(b.file)}  dataset {safe(b.dataset)}  source {safe(b.source)}  "
                f"submitted by {safe(b.submitter)}\n"
                f"scanned {b.scanned_at.isoformat(timespec='seconds')}  MLflow run {safe(b.mlflow_run_id)}\n"
                f"{b.rows} rows: {b.accepted} accepted, {b.quarantined} quarantined "
                f"({b.pending} pending, {b.released} released, {b.rejected} rejected)"
            )
            verdict = batch_summary(settings, b).get("verdict")
            if verdict:
                typer.echo(verdict["headline"])
                for line in verdict.get("evidence", []):
                    typer.echo(f"  evidence: {line}")
            return
        detail = row_detail(settings, ledger, row_id)
    r = detail.record
    typer.echo(f"row {safe(r.id)}  dataset {safe(r.dataset)}  status {r.status.value}  suspicion {r.suspicion:.4f}")
    for reason in r.reasons:
        typer.echo(f"  - {safe(reason)}")
    scores = {k: v for k, v in r.scores.items() if not k.endswith("_raw") and isinstance(v, (int, float))}
    if scores:
        typer.echo(
            "  scores (1 − p-value against trusted rows): "
            + ", ".join(f"{safe(name)} {value:.4f}" for name, value in scores.items())
        )
    if r.review:
        typer.echo(
            f"  {r.review.action.past_tense} by {safe(r.review.by)} at "
            f"{r.review.at.isoformat(timespec='seconds')}: {safe(r.review.reason)}"
        )
    neighbours = detail.neighbours
    if not neighbours.empty:
        columns = [c for c in neighbours.columns if c != "distance"]
        typer.echo("\nThe row beside its nearest trusted rows:")
        header = ["", "this row", *[f"trusted #{i + 1}" for i in range(len(neighbours))]]
        table = [[safe(c), _cell(detail.values.get(c)), *[_cell(v) for v in neighbours[c]]] for c in columns]
        table.append(["distance", "", *[f"{d:.3f}" for d in neighbours["distance"]]])
        widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
        for row in [header, *table]:
            typer.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


def _act(action: str, row_ids: list[str], by: str, reason: str, workspace: Path | None) -> None:
    from pipeline.ledger import ReviewAction
    from pipeline.review import act, open_ledger

    if not by.strip() or not reason.strip():
        raise PoisonguardError("--by and --reason must not be empty: every review action says who and why.")
    settings = Settings.from_environment(workspace)
    with open_ledger(settings) as ledger:
        records = act(settings, ledger, action, row_ids, by, reason)
    typer.echo(
        f"{ReviewAction(action).past_tense.capitalize()} {len(records)} row(s): {', '.join(safe(r.row_id) for r in records)}"
    )


@review_app.command()
def release(
    row_ids: list[str] = typer.Argument(..., help="Row ids (batch:row)."),
    by: str = typer.Option(..., "--by", help="Who is releasing (recorded)."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded)."),
    workspace: Path | None = WORKSPACE,
) -> None:
    """Release pending rows into the dataset's accepted data. All or none."""
    _act("release", row_ids, by, reason, workspace)


@review_app.command()
def reject(
    row_ids: list[str] = typer.Argument(..., help="Row ids (batch:row)."),
    by: str = typer.Option(..., "--by", help="Who is rejecting (recorded)."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded)."),
    workspace: Path | None = WORKSPACE,
) -> None:
    """Reject pending rows for good: they never reach training. All or none."""
    _act("reject", row_ids, by, reason, workspace)


def verify(
    record_anchor: bool = typer.Option(
        False,
        "--record-anchor",
        help="Append the verified head to the ledger anchor (after checking the entries written without it).",
    ),
    workspace: Path | None = WORKSPACE,
) -> None:
    """Check the ledger's hash chain (and its anchor, when configured): exit 3 and name every
    problem if history was edited. Prints the head to pin with 'gate --expect-head'."""
    from pipeline.anchor import describe, open_ledger

    settings = Settings.from_environment(workspace)
    anchor = settings.anchor
    if record_anchor and anchor is None:
        raise PoisonguardError(
            "--record-anchor needs an anchor: set POISONGUARD_LEDGER_ANCHOR (a file outside the "
            "workspace) and/or POISONGUARD_ANCHOR_KEY."
        )
    with open_ledger(settings) as ledger:
        head = ledger.head()
        anchored = anchor.newest()[0] if anchor is not None else None
        problems = ledger.verify(expected_head=anchored)
        if anchor is not None and not record_anchor:
            problems += anchor.check(head)
    if problems:
        for problem in problems:
            typer.echo(f"poisonguard: tampered: {safe(problem)}", err=True)
        raise typer.Exit(3)
    if record_anchor and anchor is not None and head is not None:
        anchor.record(head, ledger.url)
        typer.echo(f"Anchored head {describe(head)} in {anchor.path}.")
    typer.echo(
        f"Ledger intact: {head.sequence if head else 0} entries, head {describe(head)} "
        "(pin it: poisonguard gate --expect-head ...)."
    )


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else safe(value)
