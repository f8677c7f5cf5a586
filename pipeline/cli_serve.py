"""``poisonguard serve`` and ``poisonguard ingest-landing``: scheduled ingestion from landing
areas, configured in ``poisonguard.toml`` (see ``pipeline/landing.py`` and docs/scheduling.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipeline.errors import PoisonguardError
from pipeline.terminal import terminal_safe as safe

if TYPE_CHECKING:  # pipeline.landing reads tables (pandas, Arrow): imported where a command runs
    from pipeline.landing import DatasetConfig, LandedFile, LandingConfig, PassReport

CONFIG = typer.Option(
    Path("poisonguard.toml"), "--config", help="The datasets and their landing areas (see examples/poisonguard.toml)."
)


def serve(
    config: Path = CONFIG,
    limit: int | None = typer.Option(None, "--limit", min=1, help="Run at most this many flows at once."),
) -> None:
    """Serve each dataset's landing pass on its schedule, and its gate, as Prefect deployments.

    Needs a Prefect server (PREFECT_API_URL); runs until interrupted."""
    from pipeline.config import Settings
    from pipeline.landing import load_config, prepare_landing

    configured = load_config(config)
    for dataset in configured.datasets.values():
        prepare_landing(dataset)
    if not os.environ.get("PREFECT_API_URL"):
        raise PoisonguardError(
            "poisonguard serve needs a Prefect server: the temporary one Prefect starts without it runs no "
            "scheduler and stops with this process. Start one (prefect server start) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api, or run `poisonguard ingest-landing` from cron "
            "(docs/scheduling.md)."
        )
    deployments = build_deployments(configured, config.resolve())
    from pipeline.cli_prefect import prepare_prefect

    prepare_prefect(Settings.from_environment(configured.workspace))
    from prefect import serve as serve_deployments

    serve_deployments(*deployments, limit=limit)


def build_deployments(configured: LandingConfig, config_path: Path) -> list[Any]:
    """Per dataset: ``poisonguard-landing/<dataset>`` on the configured schedule (on demand
    without one) and ``poisonguard-gate-dataset/<dataset>`` on demand."""
    from prefect.deployments.runner import EntrypointType

    from flows.landing import gate_dataset_flow, landing_flow

    deployments = []
    for dataset in configured.datasets.values():
        parameters = {"config": str(config_path), "dataset": dataset.name}
        # by module: served runs import the installed package, whatever the working directory
        deployments.append(
            landing_flow.to_deployment(
                name=dataset.name,
                schedules=[_schedule(dataset)] if dataset.scheduled else None,
                parameters=parameters,
                description=f"Scan each new file in {dataset.landing} exactly once for dataset '{dataset.name}'.",
                tags=["poisonguard", "landing"],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
        deployments.append(
            gate_dataset_flow.to_deployment(
                name=dataset.name,
                parameters=parameters,
                description=f"Before retraining on '{dataset.name}': verify, then write the training snapshot.",
                tags=["poisonguard", "gate"],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def _schedule(dataset: DatasetConfig) -> Any:
    from prefect.schedules import Cron, Interval

    if dataset.interval_seconds is not None:
        return Interval(dataset.interval_seconds, timezone=dataset.timezone)
    try:
        return Cron(str(dataset.cron), timezone=dataset.timezone)
    except ValueError as exc:
        raise dataset.error("cron", f"{exc} (five fields: minute hour day-of-month month day-of-week)") from None


def ingest_landing(
    config: Path = CONFIG,
    dataset: str = typer.Option(..., "--dataset", help="The configured dataset whose landing area to scan."),
) -> None:
    """Scan each new file of a dataset's landing area once, now (for cron).

    Claims every new file exactly once and resumes files an interrupted pass left; `serve` runs
    the same pass on a schedule. Exit 1 when files are left for the next pass."""
    from pipeline.landing import LandingIncomplete

    try:
        report = run_landing(config=config, dataset=dataset)
    except LandingIncomplete as incomplete:
        print_pass(incomplete.report)
        raise
    print_pass(report)


def run_landing(*, config: Path, dataset: str) -> PassReport:
    """Run the landing flow once, in this process, on Prefect's temporary server unless
    PREFECT_API_URL names one."""
    from pipeline.cli_prefect import run_flow
    from pipeline.config import Settings
    from pipeline.landing import load_config, prepare_landing

    configured = load_config(config).dataset(dataset)
    prepare_landing(configured)  # a config problem: one line, before any service starts

    return run_flow(
        Settings.from_environment(configured.workspace), "flows.landing", "landing_flow", str(config.resolve()), dataset
    )


def print_pass(report: PassReport) -> None:
    from pipeline.landing import Outcome

    if not report.files:
        typer.echo(f"No new files in {safe(report.landing)}.")
        return
    typer.echo(
        f"{safe(report.landing)}: "
        + ", ".join(f"{report.count(outcome)} {outcome.value}" for outcome in Outcome if report.count(outcome))
    )
    for landed in report.files:
        typer.echo(f"  {safe(describe(landed))}")


def describe(landed: LandedFile) -> str:
    from pipeline.landing import Outcome

    if landed.outcome is Outcome.SCANNED:
        again = " (decision recorded earlier, delivered again)" if landed.redelivered else ""
        return (
            f"{landed.name}: scanned{again}, batch {landed.batch_id}: {landed.rows} rows, {landed.accepted} "
            f"accepted, {landed.quarantined} quarantined. Report: {landed.report}"
        )
    if landed.outcome is Outcome.ALREADY_RECORDED:
        return (
            f"{landed.name}: already scanned as batch {landed.batch_id}; nothing ingested again. Moved to {landed.location}"
        )
    if landed.outcome is Outcome.FAILED:
        return f"{landed.name}: failed: {landed.error} Moved to {landed.location} (the error is beside it)."
    return f"{landed.name}: left for the next pass (attempt {landed.attempt}): {landed.error}"
