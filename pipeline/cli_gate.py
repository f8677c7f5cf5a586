"""``poisonguard gate``: verify, then release the training snapshot. Runs the Prefect flow
``poisonguard-gate`` the way ``poisonguard scan`` runs the scan flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pipeline.cli_review import WORKSPACE
from pipeline.config import Settings
from pipeline.terminal import terminal_safe as safe


def gate(
    dataset: str = typer.Option(..., "--dataset", help="The training set to release (as scanned with --dataset)."),
    out: Path = typer.Option(..., "--out", help="Folder for snapshot.parquet and manifest.json (refused.json if refused)."),
    max_pending: int = typer.Option(0, "--max-pending", min=0, help="Refuse while more than this many rows await review."),
    keep_provenance: bool = typer.Option(
        True,
        "--keep-provenance/--drop-provenance",
        help="Keep the poisonguard_batch_id and row_number columns in the snapshot.",
    ),
    expect_head: str | None = typer.Option(
        None,
        "--expect-head",
        metavar="SEQUENCE:HASH",
        help="Refuse unless the ledger's head is this one (as the last gate "
        "or verify printed it): pins history outside the workspace.",
    ),
    workspace: Path | None = WORKSPACE,
) -> None:
    """Before retraining: verify every accepted batch and review against the ledger, then write
    the training snapshot. Exit 3, releasing nothing, on any mismatch or pending review."""
    result = run_gate(
        dataset=dataset,
        out=out,
        max_pending=max_pending,
        keep_provenance=keep_provenance,
        workspace=workspace,
        expect_head=expect_head,
    )
    manifest = result.manifest
    reviews, ledger = manifest["reviews"], manifest["ledger"]
    typer.echo(
        f"Gate passed for dataset '{dataset}': {len(manifest['batches'])} batch(es) and "
        f"{manifest['gate']['files_checked']} files match the ledger; ledger intact "
        f"({ledger['head_sequence']} entries, head {str(ledger['head_hash'])[:16]})."
    )
    typer.echo(
        f"Snapshot: {safe(result.path.resolve())}  {result.rows} rows "
        f"({reviews['released']} released by stewards; {reviews['rejected']} rejected and "
        f"{reviews['pending']} pending rows left out)"
    )
    typer.echo(f"sha256 {result.sha256}")
    typer.echo(f"Manifest: {safe(result.manifest_path.resolve())}")
    typer.echo(f"MLflow gate run {result.run_id} (log the snapshot as your training input; see README)")
    typer.echo(f"Ledger head {ledger['head_sequence']}:{ledger['head_hash']} (pin it for the next gate: --expect-head)")


def run_gate(
    *,
    dataset: str,
    out: Path,
    max_pending: int = 0,
    keep_provenance: bool = True,
    workspace: Path | None = None,
    expect_head: str | None = None,
) -> Any:
    """Run the gate flow; returns ``pipeline.gating.GateResult`` or raises ``GateRefused`` (exit 3)."""
    from pipeline.cli_prefect import quiet_libraries, run_flow
    from pipeline.gating import GateRequest, run
    from pipeline.paths import check_output_folder, check_workspace

    settings = Settings.from_environment(workspace)
    request = GateRequest(dataset, Path(out), max_pending, keep_provenance, expect_head=expect_head)
    check_workspace(settings.workspace)
    check_output_folder(request.out, workspace=settings.workspace)
    quiet_libraries()
    if settings.orchestrator == "plain":
        return run(request, settings)

    return run_flow(settings, "flows.gate", "gate_flow", request, settings)
