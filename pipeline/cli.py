"""The ``poisonguard`` command line. Bad input: one line on stderr, exit 2, never a traceback."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import typer

from pipeline.cli_gate import gate
from pipeline.cli_prefect import quiet_libraries, run_flow
from pipeline.cli_review import review_app, verify
from pipeline.cli_serve import ingest_landing, serve
from pipeline.cli_ui import ui
from pipeline.config import Settings
from pipeline.errors import PoisonguardError
from pipeline.terminal import terminal_safe as safe

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Catch poisoned training data before it reaches a model.",
)
app.add_typer(review_app, name="review")
app.command()(verify)
app.command()(gate)
app.command()(ui)
app.command()(serve)
app.command()(ingest_landing)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "data_samples"


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"poisonguard: error: {safe_lines(message)}", err=True)
    raise typer.Exit(code)


@app.command()
def profile(
    reference: Path = typer.Argument(..., help="Trusted reference data (.csv or .parquet)."),
    label: str = typer.Option(..., "--label", help="The label column."),
    out: Path = typer.Option(..., "--out", help="Where to write the suite JSON."),
    name: str | None = typer.Option(None, "--name", help="Suite name (default: the reference's stem)."),
    protected: list[str] = typer.Option([], "--protected", help="Columns never used as model features (repeatable)."),
    margin: float = typer.Option(0.1, "--margin", help="Range slack as a fraction of (max - min)."),
    id: list[str] = typer.Option(
        [], "--id", help="An id column: checked for nulls and repeats, never a feature (repeatable)."
    ),
    time: list[str] = typer.Option(
        [], "--time", help="A date/time column: checked to parse and to be recent, never a feature (repeatable)."
    ),
    text: list[str] = typer.Option([], "--text", help="A free-text column, carried through unchecked (repeatable)."),
    ignore: list[str] = typer.Option([], "--ignore", help="A column carried through unchecked (repeatable)."),
) -> None:
    """Infer a Great Expectations suite, with each column's role, from trusted reference data."""
    from pipeline.io import ROW_NUMBER, read_table
    from pipeline.paths import check_output_file
    from pipeline.roles import describe, explicit_roles, infer_roles, leading_zero_codes
    from pipeline.validation import ColumnKind, infer_suite, load_suite, save_suite

    check_output_file(out, inputs=[reference])
    table = read_table(reference, role="reference")
    if label not in table.columns:
        fail(f"The label column '{safe(label)}' is not in the reference {safe(reference)}.")
    missing = [c for c in [*protected, *id, *time, *text, *ignore] if c not in table.columns]
    if missing:
        named = ", ".join(f"'{safe(c)}'" for c in missing)
        fail(f"Column(s) not in the reference {safe(reference)}: {named}.")
    frame, exact = table.frame.drop(columns=[ROW_NUMBER]), table.exact.to_pandas()
    roles = infer_roles(frame, label, protected, explicit_roles(id=id, time=time, text=text, ignore=ignore), exact=exact)
    earlier = load_suite(out).roles if out.is_file() else None
    suite = infer_suite(
        frame,
        label,
        name or reference.stem,
        range_margin=margin,
        protected=tuple(protected),
        source=reference.name,
        roles=roles,
        kinds=dict.fromkeys(leading_zero_codes(frame, exact), ColumnKind.CATEGORICAL),
    )
    save_suite(suite, out)
    typer.echo(f"Wrote suite '{safe(suite.name)}' ({len(suite.document['expectations'])} expectations) to {safe(out)}")
    if earlier != roles:  # the first profile of this suite, or roles that changed: say what each column is
        typer.echo(
            "Column roles (review them in meta.poisonguard.roles of the suite; set them with "
            "--id/--time/--text/--ignore/--protected):"
        )
        for line in describe(roles):
            typer.echo(f"  {safe(line)}")


@app.command()
def scan(
    batch: Path = typer.Argument(..., help="The incoming batch (.csv or .parquet)."),
    reference: Path = typer.Option(..., "--reference", help="Trusted training data."),
    label: str = typer.Option(..., "--label", help="The label column."),
    out: Path = typer.Option(..., "--out", help="Folder for accepted/quarantined/scores/summary/report."),
    suite: Path | None = typer.Option(None, "--suite", help="GX suite JSON (default: inferred from --reference)."),
    holdout: Path | None = typer.Option(
        None, "--holdout", help="Trusted validation set (default: split off the reference)."
    ),
    source: str = typer.Option("unknown", "--source", help="Where the batch came from (a feed, a partner)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Training set the batch feeds (default: reference's stem)."),
    workspace: Path | None = typer.Option(
        None, "--workspace", help="State folder (default ./.poisonguard or $POISONGUARD_WORKSPACE)."
    ),
    progress: bool | None = typer.Option(
        None,
        "--progress/--no-progress",
        help="One line per stage with rows/s on stderr (default: when stderr is a terminal).",
    ),
    id: list[str] = typer.Option([], "--id", help="An id column (repeatable); overrides the suite's roles."),
    time: list[str] = typer.Option([], "--time", help="A date/time column (repeatable)."),
    text: list[str] = typer.Option([], "--text", help="A free-text column (repeatable)."),
    ignore: list[str] = typer.Option([], "--ignore", help="A column carried through unchecked (repeatable)."),
) -> None:
    """Scan a batch: validate, score, quarantine, record provenance."""
    from pipeline.roles import explicit_roles

    roles = tuple((c, r.value) for c, r in explicit_roles(id=id, time=time, text=text, ignore=ignore).items())
    summary = run_scan(
        batch=batch,
        reference=reference,
        label=label,
        out=out,
        suite=suite,
        holdout=holdout,
        source=source,
        dataset=dataset,
        workspace=workspace,
        progress=sys.stderr.isatty() if progress is None else progress,
        roles=roles,
    )
    print_summary(summary, out)


def run_scan(
    *,
    batch: Path,
    reference: Path,
    label: str,
    out: Path,
    suite: Path | None = None,
    holdout: Path | None = None,
    source: str = "unknown",
    dataset: str | None = None,
    workspace: Path | None = None,
    progress: bool = False,
    roles: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    from pipeline.fit_cache import FitCache
    from pipeline.input_paths import check_batch_path, symlinks_allowed
    from pipeline.paths import check_output_folder, check_workspace
    from pipeline.scan import ScanRequest, preflight

    settings = dataclasses.replace(Settings.from_environment(workspace), show_progress=progress)
    request = ScanRequest(
        batch=Path(batch),
        reference=Path(reference),
        label=label,
        out=Path(out),
        suite=suite,
        holdout=holdout,
        source=source,
        dataset=dataset,
        roles=roles,
    )
    check_batch_path(request.batch, allow_symlinks=symlinks_allowed(os.environ))
    check_workspace(settings.workspace)
    check_output_folder(
        request.out, workspace=settings.workspace, inputs=[request.batch, request.reference, request.holdout, request.suite]
    )
    preflight(request)
    FitCache.for_workspace(settings.workspace)  # a bad cache key is one line now, not a failed flow run
    quiet_libraries()
    if settings.orchestrator == "plain":
        from pipeline.scan_run import PlainRunner, run

        with PlainRunner() as runner:
            return run(request, settings, runner)

    return run_flow(settings, "flows.ingest", "run_scan_flow", request, settings)


def print_summary(summary: dict[str, Any], out: Path) -> None:
    counts = summary["counts"]
    verdict = summary.get("verdict")
    if verdict:
        typer.echo(safe(verdict["headline"]))
        for line in verdict["evidence"]:
            typer.echo(f"  evidence: {safe(line)}")
        if verdict.get("drift_note"):
            typer.echo(f"  note: {safe(verdict['drift_note'])}")
    if summary.get("duplicate"):
        typer.echo(
            f"Batch {safe(summary['batch']['file'])} (sha256 {summary['batch']['sha256'][:12]}…) was already "
            f"scanned for dataset '{safe(summary['dataset'])}' on {summary['scanned_at']}; nothing ingested "
            "again. The recorded decision was written to the output folder."
        )
    typer.echo(f"{counts['rows']} rows: {counts['accepted']} accepted, {counts['quarantined']} quarantined.")
    carried = {c: r for c, r in summary.get("roles", {}).items() if r not in ("feature", "label", "protected")}
    if carried:
        typer.echo("  not features: " + ", ".join(f"{safe(c)} ({r})" for c, r in carried.items()))
    for finding in summary["batch_findings"]:
        typer.echo(f"  batch held: {safe(finding['message'])}")
    for alarm in summary.get("alarms", []):
        typer.echo(f"  alarm: {safe(alarm['message'])}")
    held = {k: v for k, v in summary["checks"].items() if v}
    for check, count in sorted(held.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {count:6d}  {safe(check)}")
    typer.echo(f"Results: {safe(out.resolve())}  (report.html, accepted/quarantined/scores.parquet, summary.json)")
    typer.echo(f"MLflow run {summary['mlflow']['run_id']} at {summary['mlflow']['tracking_uri']}")


@app.command()
def demo(
    workspace: Path = typer.Option(Path(".poisonguard-demo"), "--workspace", help="State folder for the demo."),
    out: Path = typer.Option(Path("demo-output"), "--out", help="Where the demo's results go."),
) -> None:
    """Scan every batch in data_samples/ against its trusted reference, on the embedded defaults."""
    batches = sorted(p for p in DEMO_DIR.glob("batch_*") if p.suffix in (".csv", ".parquet"))
    if not batches:
        fail(f"No sample batches found in {DEMO_DIR}.")
    for path in batches:
        typer.echo(f"\n== {path.name}")
        started = time.perf_counter()
        summary = run_scan(
            batch=path,
            reference=DEMO_DIR / "reference.parquet",
            label="deny",
            out=out / path.stem,
            suite=REPO_ROOT / "expectations" / "hmda.json",
            holdout=DEMO_DIR / "holdout.parquet",
            source="demo-feed",
            dataset="hmda",
            workspace=workspace,
        )
        print_summary(summary, out / path.stem)
        typer.echo(f"({time.perf_counter() - started:.1f} s)")
    settings = Settings.from_environment(workspace)
    typer.echo("\nOpen a report in a browser, e.g. " + str((out / batches[0].stem / "report.html").resolve()))
    typer.echo(
        "Browse provenance in the MLflow UI:\n  .venv/bin/mlflow ui --backend-store-uri "
        f"{settings.tracking_uri} --port 5000   (then open http://127.0.0.1:5000)"
    )


def main() -> None:
    """Console entry point: user errors become one line and exit 2; nothing prints a traceback.
    Whatever reaches stdout and stderr through Python passes ``pipeline.redaction`` first."""
    from pipeline.redaction import RedactingStream, known_secrets

    secrets = known_secrets()  # before Settings moves any of them out of a URL
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout, secrets), RedactingStream(sys.stderr, secrets)
    try:
        _main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams


def _main() -> None:
    try:
        # Without standalone mode click *returns* the code of a typer.Exit (verify's 3, a failed
        # profile's 2) instead of raising it: the returned value is the exit code.
        returned = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except PoisonguardError as exc:
        from pipeline.redaction import redact

        typer.echo(redact(f"poisonguard: error: {safe_lines(exc)}"), err=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("poisonguard: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Usage errors: typer >= 0.29 bundles its own click, whose exceptions derive from
        # TyperException, not from click.ClickException; both carry format_message().
        import click

        if isinstance(exc, (click.ClickException, typer.TyperException)) and hasattr(exc, "format_message"):
            typer.echo(f"poisonguard: error: {safe_lines(exc.format_message())}", err=True)
            sys.exit(2)
        _report_internal_error(exc)
        sys.exit(1)
    sys.exit(returned if type(returned) is int else 0)


def safe_lines(message: object) -> str:
    """A message for the terminal: its own line breaks kept, everything else from data escaped."""
    return "\n".join(safe(line) for line in str(message).split("\n"))


def _report_internal_error(exc: BaseException) -> None:
    from pipeline.redaction import redact

    log = _workspace_in(sys.argv[1:]) / "logs" / "last-error.txt"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(redact("".join(traceback.format_exception(exc))))
        where = f" (details in {log})"
    except OSError:
        where = ""
    typer.echo(redact(f"poisonguard: internal error: {type(exc).__name__}: {safe(exc)}{where}"), err=True)


def _workspace_in(args: list[str]) -> Path:
    """The --workspace the command was given (the command's own parsing may be what failed)."""
    for i, arg in enumerate(args):
        if arg == "--workspace" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--workspace="):
            return Path(arg.partition("=")[2])
    return Path(os.environ.get("POISONGUARD_WORKSPACE", ".poisonguard"))


if __name__ == "__main__":
    main()
