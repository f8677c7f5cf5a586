"""The review page (``pipeline.ui``) through FastAPI's TestClient: pages, sign-in, the guards on
every write, release/reject mirrored in the ledger, errors as pages, escaping.

The state is one real ``poisonguard scan`` of ``batch_03_impossible_and_outliers.csv`` with
markup planted in one cell (Prefect flow, MLflow run, workspace, ledger), made once per session
and copied per module (``tests/test_ui_browser.py`` reuses it). The scan runs the outlier
detector only: label consistency's fit takes 10-90 s on 2 shared cores, and the page does not
care which detector held a row.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.config import Settings
from pipeline.ledger import Ledger, RowRecord, RowStatus
from pipeline.ui import create_app

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
TOKEN = "a-test-token-that-is-long-enough"
BASE_URL = "http://127.0.0.1:8765"
SCRIPT = '<script>alert("cell")</script>'
DATASET = "hmda-ui"
_SCANNED: dict[str, Path] = {}


# --- the state: one scan, copied per test module ---------------------------------------------


def scan_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with batch 03 (plus a ``<script>`` cell) scanned through the CLI; built once."""
    if "workspace" not in _SCANNED:
        from typer.testing import CliRunner

        import pipeline.config
        from pipeline.cli import app

        root = tmp_path_factory.mktemp("ui-scan")
        rows = list(csv.reader((SAMPLES / "batch_03_impossible_and_outliers.csv").open(newline="")))
        rows[3][rows[0].index("phist")] = SCRIPT  # row_number 2: a yes/no column, so the suite holds it
        batch_file = root / "batch_03_with_markup.csv"
        with batch_file.open("w", newline="") as f:
            csv.writer(f).writerows(rows)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pipeline.config, "DEFAULT_DETECTORS", {"outliers": {}})
            result = CliRunner().invoke(
                app,
                [
                    "scan",
                    str(batch_file),
                    "--reference",
                    str(SAMPLES / "reference.parquet"),
                    "--label",
                    "deny",
                    "--holdout",
                    str(SAMPLES / "holdout.parquet"),
                    "--suite",
                    str(REPO / "expectations" / "hmda.json"),
                    "--source",
                    "partner-feed",
                    "--dataset",
                    DATASET,
                    "--workspace",
                    str(root / "workspace"),
                    "--out",
                    str(root / "out"),
                ],
            )
        assert result.exit_code == 0, (result.output, result.exception)
        summary = json.loads((root / "out" / "summary.json").read_text())
        assert list(summary["detectors"]) == ["outliers"], "Settings no longer take DEFAULT_DETECTORS from config"
        _SCANNED["workspace"] = root / "workspace"
    return _SCANNED["workspace"]


def copy_of_scan(tmp_path_factory: pytest.TempPathFactory, name: str) -> Settings:
    """Settings over a private copy of the scanned workspace (its own ledger to change)."""
    target = tmp_path_factory.mktemp(name) / "workspace"
    shutil.copytree(scan_once(tmp_path_factory), target)
    return settings_for(target)


def settings_for(workspace: Path) -> Settings:
    environ = {k: v for k, v in os.environ.items() if k != "POISONGUARD_DATABASE_URL"}  # the workspace's SQLite
    return Settings.from_environment(workspace, environ)


@dataclasses.dataclass
class State:
    settings: Settings
    app: object
    ledger: Ledger
    batch_id: str
    markup_row: str  # the row with <script> in a cell and in its reason

    def pending(self, n: int = 1) -> list[RowRecord]:
        """The n most suspect pending rows other than the markup row."""
        rows = [r for r in self.ledger.list_rows(batch_id=self.batch_id, status="pending") if r.id != self.markup_row]
        rows.sort(key=lambda r: (-r.suspicion, r.row_number))
        assert len(rows) >= n, "the scan quarantined too few rows for this test"
        return rows[:n]

    def client(self, signed_in: bool = True, **kwargs) -> TestClient:
        client = TestClient(self.app, base_url=BASE_URL, **kwargs)
        if signed_in:
            response = client.post("/sign-in", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
            assert response.status_code == 303, response.text
        return client

    def snapshot(self) -> tuple:
        head = self.ledger.head()
        return head, [(r.id, r.status, r.review) for r in self.ledger.list_rows(batch_id=self.batch_id)]


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Iterator[State]:
    settings = copy_of_scan(tmp_path_factory, "ui")
    app = create_app(settings, TOKEN)
    ledger = app.state.ledger
    (batch,) = ledger.list_batches()
    markup = [r for r in ledger.list_rows(batch_id=batch.id, status="pending") if any(SCRIPT in x for x in r.reasons)]
    assert len(markup) == 1, "the planted <script> cell should be quarantined with a reason quoting it"
    yield State(settings, app, ledger, batch.id, markup[0].id)
    ledger.close()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def review_form(client: TestClient, row_id: str, **fields: str):
    page = client.get(f"/rows/{row_id}")
    data = {"csrf": csrf_of(page.text), "action": "release", "by": "alice", "reason": "checked", **fields}
    return client.post(f"/rows/{row_id}/review", data=data, follow_redirects=False)


# --- pages -----------------------------------------------------------------------------------


def test_pages_need_a_sign_in_with_the_token(state):
    client = state.client(signed_in=False)
    response = client.get("/batches/x?y=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/sign-in?next=%2Fbatches%2Fx%3Fy%3D1"

    wrong = client.post("/sign-in", data={"token": "not-the-token-at-all", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 403 and "not the token" in wrong.text
    assert "set-cookie" not in wrong.headers

    right = client.post("/sign-in", data={"token": TOKEN, "next": "/rows"}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/rows"
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert TOKEN.lower() not in cookie  # the cookie names a session; it does not carry the token
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_sign_in_never_sends_the_steward_to_another_site(state, target):
    client = state.client(signed_in=False)
    response = client.post("/sign-in", data={"token": TOKEN, "next": target}, follow_redirects=False)
    assert response.headers["location"] == "/"


def test_batches_page_shows_each_batch_with_its_counts(state):
    batch = state.ledger.get_batch(state.batch_id)
    html = state.client().get("/").text
    assert DATASET in html and batch.file in html and f'href="/batches/{batch.id}"' in html
    cells = re.findall(r'<td class="num">(?:<strong>)?(\d+)', html)
    assert cells == [
        str(n) for n in (batch.rows, batch.accepted, batch.quarantined, batch.pending, batch.released, batch.rejected)
    ]
    assert batch.quarantined >= 15


def test_batch_page_shows_each_columns_role(state):
    html = state.client().get(f"/batches/{state.batch_id}").text
    assert "<dt>column roles</dt>" in html and "label: deny" in html and "protected: afam" in html


def test_batch_page_lists_quarantined_rows_pending_first_most_suspect_first(state):
    client = state.client()
    (decided,) = state.pending(1)
    assert review_form(client, decided.id, action="reject", reason="impossible record").status_code == 303

    html = client.get(f"/batches/{state.batch_id}").text
    listed = re.findall(r'href="/rows/([^"]+)"', html)
    rows = {r.id: r for r in state.ledger.list_rows(batch_id=state.batch_id) if r.initial_status == RowStatus.PENDING}
    assert sorted(listed) == sorted(rows)  # every quarantined row, no accepted one
    expected = sorted(rows.values(), key=lambda r: (r.status != RowStatus.PENDING, -r.suspicion, r.row_number))
    assert listed == [r.id for r in expected]
    assert listed[-1] == decided.id and "impossible record" in html
    for reason in rows[listed[0]].reasons:
        assert reason.replace("'", "&#39;").replace('"', "&#34;").replace("<", "&lt;").replace(">", "&gt;") in html


def test_row_page_shows_values_beside_trusted_neighbours_reasons_scores_and_the_form(state):
    (row,) = state.pending(1)
    html = state.client().get(f"/rows/{row.id}").text
    assert "trusted #5" in html and "distance" in html
    assert all(name in html for name in ("pirat", "hirat", "lvrat", "deny"))
    assert "outliers" in html  # the detector's score
    assert row.reasons[0].split(":")[0].replace("'", "&#39;") in html
    assert 'name="action" value="release"' in html and 'name="action" value="reject"' in html
    assert re.search(r'<input[^>]*name="by"[^>]*required', html)
    assert re.search(r'<textarea[^>]*name="reason"[^>]*required', html)

    accepted = state.ledger.list_rows(batch_id=state.batch_id, status="accepted")[0]
    html = state.client().get(f"/rows/{accepted.id}").text
    assert "the scan accepted this row" in html.lower() and "trusted #1" in html and 'name="action"' not in html


def test_rows_page_lists_like_review_list(state):
    client = state.client()
    html = client.get("/rows", params={"status": "pending", "dataset": DATASET}).text
    pending = sorted(state.ledger.list_rows(dataset=DATASET, status="pending"), key=lambda r: (-r.suspicion, r.id))
    assert re.findall(r'href="/rows/([^"]+)"', html) == [r.id for r in pending]
    assert client.get("/rows", params={"status": "nonsense"}).status_code == 400


def test_ledger_page_verifies_the_chain(state):
    html = state.client().get("/ledger").text
    assert "Ledger intact" in html and state.ledger.head().entry_hash[:16] in html


def test_scan_report_is_served_in_a_sandbox(state):
    response = state.client().get(f"/batches/{state.batch_id}/report")
    assert response.status_code == 200 and "poisonguard scan of" in response.text
    policy = response.headers["content-security-policy"]
    assert "sandbox" in policy and "script-src" not in policy and "default-src 'none'" in policy
    # the report itself escapes what it shows: the planted cell is text, not markup
    assert SCRIPT not in response.text and "&lt;script&gt;alert(" in response.text
    assert "built-in method" not in response.text


# --- release and reject ---------------------------------------------------------------------------


def test_release_and_reject_through_the_row_form_are_recorded_in_the_ledger(state):
    client = state.client()
    released, rejected = state.pending(2)
    response = review_form(client, released.id, action="release", by="alice", reason="income confirmed with the lender")
    assert response.status_code == 303 and response.headers["location"] == f"/rows/{released.id}"
    page = client.get(response.headers["location"]).text
    assert f"Released 1 row(s): {released.id}" in page
    assert 'value="alice"' in client.get(f"/rows/{rejected.id}").text  # the next form remembers who reviews

    assert review_form(client, rejected.id, action="reject", by="bob", reason="ratios impossible").status_code == 303
    for row_id, status, by, reason in [
        (released.id, RowStatus.RELEASED, "alice", "income confirmed with the lender"),
        (rejected.id, RowStatus.REJECTED, "bob", "ratios impossible"),
    ]:
        record = state.ledger.get_row(row_id)
        assert record.status == status
        assert (record.review.by, record.review.reason) == (by, reason)
    assert state.ledger.verify() == []
    # mirrored to the batch's MLflow run, as `poisonguard review release` does
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(state.settings.tracking_uri).get_run(state.ledger.get_batch(state.batch_id).mlflow_run_id).data.tags
    assert tags[f"review.row.{released.row_number}"].startswith("released by alice at ")
    assert tags[f"review.row.{rejected.row_number}"].endswith(": ratios impossible")
    batch_page = client.get(f"/batches/{state.batch_id}").text
    assert "released by <strong>alice</strong>" in batch_page and "rejected by <strong>bob</strong>" in batch_page


def test_selected_rows_are_released_together_from_the_batch_page(state):
    client = state.client()
    rows = state.pending(2)
    csrf = csrf_of(client.get(f"/batches/{state.batch_id}").text)
    response = client.post(
        f"/batches/{state.batch_id}/review",
        follow_redirects=False,
        data={
            "csrf": csrf,
            "row": [r.id for r in rows],
            "action": "release",
            "by": "carol",
            "reason": "values confirmed at the source",
        },
    )
    assert response.status_code == 303 and response.headers["location"] == f"/batches/{state.batch_id}"
    assert "Released 2 row(s)" in client.get(f"/batches/{state.batch_id}").text
    assert all(state.ledger.get_row(r.id).review.by == "carol" for r in rows)


def test_an_already_decided_row_gets_a_clear_message_and_nothing_changes(state):
    client = state.client()
    (row,) = state.pending(1)
    csrf = csrf_of(client.get(f"/rows/{row.id}").text)
    first = {"csrf": csrf, "action": "reject", "by": "dave", "reason": "first decision"}
    assert client.post(f"/rows/{row.id}/review", data=first).status_code == 200
    before = state.snapshot()
    # a second tab, still showing the form
    page = client.post(f"/rows/{row.id}/review", data={**first, "action": "release", "by": "erin", "reason": "second"})
    assert page.status_code == 200
    assert f"Cannot release {row.id}: it was already rejected by dave" in page.text
    assert "Traceback" not in page.text
    assert state.snapshot() == before
    bulk = client.post(f"/batches/{state.batch_id}/review", data={**first, "row": [row.id], "by": "erin"})
    assert "already rejected by dave" in bulk.text and state.snapshot() == before


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"by": " "}, "Say who you are and why"),
        ({"reason": ""}, "Say who you are and why"),
        ({"action": "delete"}, "Choose release or reject"),
        ({"reason": "x" * 2001}, "at most 2000"),
    ],
)
def test_a_review_without_who_or_why_changes_nothing(state, fields, message):
    client = state.client()
    (row,) = state.pending(1)
    before = state.snapshot()
    response = review_form(client, row.id, **fields)
    assert response.status_code == 303
    assert message in client.get(response.headers["location"]).text
    assert state.snapshot() == before


def test_a_batch_form_cannot_review_rows_of_another_batch_or_none(state):
    client = state.client()
    csrf = csrf_of(client.get(f"/batches/{state.batch_id}").text)
    before = state.snapshot()
    data = {"csrf": csrf, "action": "reject", "by": "mallory", "reason": "r"}
    assert "Select the rows" in client.post(f"/batches/{state.batch_id}/review", data=data).text
    other = client.post(f"/batches/{state.batch_id}/review", data={**data, "row": "ffffffffffff:1"})
    assert "is not a row of batch" in other.text
    assert state.snapshot() == before


# --- the guards on writing -------------------------------------------------------------------------


def test_a_write_without_a_session_is_refused_and_changes_nothing(state):
    (row,) = state.pending(1)
    signed_in = state.client()
    csrf = csrf_of(signed_in.get(f"/rows/{row.id}").text)
    before = state.snapshot()
    anonymous = state.client(signed_in=False)
    response = anonymous.post(
        f"/rows/{row.id}/review",
        follow_redirects=False,
        data={"csrf": csrf, "action": "release", "by": "mallory", "reason": "r"},
    )
    assert response.status_code == 403 and "Sign in first" in response.text
    anonymous.cookies.set("poisonguard_session", "abc.def")
    forged = anonymous.post(
        f"/rows/{row.id}/review", data={"csrf": csrf, "action": "release", "by": "mallory", "reason": "r"}
    )
    assert forged.status_code == 403
    assert state.snapshot() == before


@pytest.mark.parametrize(
    "case",
    [
        "no csrf",
        "wrong csrf",
        "csrf of another session",
        "foreign origin",
        "null origin",
        "cross-site fetch",
        "same-site fetch",
        "foreign referer",
    ],
)
def test_a_write_without_the_csrf_token_or_from_another_site_is_refused(state, case):
    client = state.client()
    (row,) = state.pending(1)
    csrf = csrf_of(client.get(f"/rows/{row.id}").text)
    data = {"csrf": csrf, "action": "release", "by": "mallory", "reason": "forged"}
    headers = {}
    if case == "no csrf":
        del data["csrf"]
    elif case == "wrong csrf":
        data["csrf"] = "0" * 64
    elif case == "csrf of another session":
        data["csrf"] = csrf_of(state.client().get(f"/rows/{row.id}").text)
    elif case == "foreign origin":
        headers = {"Origin": "http://evil.example"}
    elif case == "null origin":
        headers = {"Origin": "null"}
    elif case == "cross-site fetch":
        headers = {"Origin": "null", "Sec-Fetch-Site": "cross-site"}
    elif case == "same-site fetch":  # another port of this host is the same site, not the same origin
        headers = {"Sec-Fetch-Site": "same-site"}
    elif case == "foreign referer":
        headers = {"Referer": "http://evil.example/page"}
    before = state.snapshot()
    response = client.post(f"/rows/{row.id}/review", data=data, headers=headers, follow_redirects=False)
    assert response.status_code == 403
    assert "nothing was changed" in response.text
    assert state.snapshot() == before


def test_a_browser_post_from_this_page_passes_the_origin_check(state):
    """What Chromium sends under Referrer-Policy: no-referrer: Origin null, and fetch metadata."""
    client = state.client()
    (row,) = state.pending(1)
    csrf = csrf_of(client.get(f"/rows/{row.id}").text)
    for headers in ({"Origin": BASE_URL}, {"Origin": "null", "Sec-Fetch-Site": "same-origin"}):
        response = client.post(
            f"/rows/{row.id}/review",
            headers=headers,
            follow_redirects=False,
            data={"csrf": csrf, "action": "reject", "by": "frank", "reason": "checked"},
        )
        assert response.status_code == 303
    assert state.ledger.get_row(row.id).review.by == "frank"


def test_sign_out_ends_the_session(state):
    client = state.client()
    csrf = csrf_of(client.get("/").text)
    assert client.post("/sign-out", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303
    stale = client.post("/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert stale.status_code == 403


def test_a_page_reached_under_another_host_name_is_refused(state):
    """DNS rebinding: evil.example resolving to 127.0.0.1 must not get the page."""
    response = state.client(signed_in=False).get("/sign-in", headers={"Host": "evil.example:8765"})
    assert response.status_code == 400 and "host" in response.text.lower()


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/batches/ffffffffffff",
        "/rows/ffffffffffff:1",
        f"/rows/{'0' * 12}:99999",
        "/rows/not-a-row-id",
        "/no-such-page",
        "/batches/ffffffffffff/report",
    ],
)
def test_unknown_ids_and_pages_are_404_pages(state, path):
    response = state.client().get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Not found" in response.text and "Traceback" not in response.text


def test_a_review_of_an_unknown_row_is_a_404_and_changes_nothing(state):
    client = state.client()
    csrf = csrf_of(client.get("/").text)
    before = state.snapshot()
    response = client.post(
        f"/rows/{state.batch_id}:99999/review", data={"csrf": csrf, "action": "release", "by": "a", "reason": "b"}
    )
    assert response.status_code == 404 and "There is no row" in response.text
    assert client.post("/batches/ffffffffffff/review", data={"csrf": csrf}).status_code == 404
    assert state.snapshot() == before


def test_security_headers_are_on_every_response(state):
    client = state.client()
    (row,) = state.pending(1)
    responses = [
        client.get("/"),
        client.get(f"/batches/{state.batch_id}"),
        client.get(f"/rows/{row.id}"),
        client.get("/style.css"),
        client.get("/no-such-page"),
        client.get("/rows/x"),
        state.client(signed_in=False).get("/", follow_redirects=False),
        state.client(signed_in=False).get("/sign-in"),
        state.client(signed_in=False).post(f"/rows/{row.id}/review", data={}),
        client.post(f"/rows/{row.id}/review", data={}),
        client.post(f"/rows/{row.id}/review", content=b"{}", headers={"content-type": "application/json"}),
    ]
    for response in responses:
        headers = response.headers
        policy = headers["content-security-policy"]
        for directive in ("default-src 'none'", "style-src 'self'", "form-action 'self'", "frame-ancestors 'none'"):
            assert directive in policy, (response.request.url, policy)
        assert "script-src" not in policy and "unsafe-inline" not in policy
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"


def test_an_unexpected_error_is_a_plain_500_page(state, monkeypatch):
    import pipeline.ui.app

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pipeline.ui.app, "row_detail", broken)
    (row,) = state.pending(1)
    response = state.client(raise_server_exceptions=False).get(f"/rows/{row.id}")
    assert response.status_code == 500
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert response.headers["x-frame-options"] == "DENY"


def test_a_failed_mirror_to_mlflow_says_the_ledger_has_the_review(state, monkeypatch):
    import pipeline.review

    def unreachable(*args, **kwargs):
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(pipeline.review, "_mirror_to_mlflow", unreachable)
    client = state.client()
    (row,) = state.pending(1)
    response = review_form(client, row.id, action="reject", by="gina", reason="checked")
    page = client.get(response.headers["location"]).text
    assert "Rejected 1 row(s) in the ledger, but mirroring the action to the batch&#39;s MLflow run failed" in page
    assert state.ledger.get_row(row.id).review.by == "gina"


def test_markup_in_cells_in_reasons_and_in_reviews_is_rendered_inert(state):
    client = state.client()
    row_id = state.markup_row
    escaped = SCRIPT.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
    for path in (f"/rows/{row_id}", f"/batches/{state.batch_id}", "/rows?status=pending"):
        html = client.get(path).text
        assert "<script" not in html.lower() and escaped in html, path

    by, reason = '<b onmouseover="x()">mallory</b>', '<img src=x onerror=alert(1)> "quoted" & <!--'
    assert review_form(client, row_id, action="reject", by=by, reason=reason).status_code == 303
    assert state.ledger.get_row(row_id).review.reason == reason  # stored as typed, escaped when shown
    for path in (f"/rows/{row_id}", f"/batches/{state.batch_id}", "/rows?status=rejected"):
        html = client.get(path).text
        assert "<img" not in html and "<b " not in html and "<!--" not in html and "<script" not in html.lower(), path
        assert "&lt;img src=x onerror=alert(1)&gt; &#34;quoted&#34; &amp; &lt;!--" in html, path


# --- the command -------------------------------------------------------------------------------


def test_ui_command_refuses_a_non_loopback_address_without_allow_remote(run_cli, tmp_path, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(kwargs))
    refused = run_cli("ui", "--host", "0.0.0.0", "--workspace", tmp_path / "ws")
    assert refused.exit_code == 2 and "--allow-remote" in refused.stderr and not served

    monkeypatch.delenv("POISONGUARD_UI_TOKEN", raising=False)
    local = run_cli("ui", "--workspace", tmp_path / "ws", "--port", "8790")
    assert local.exit_code == 0 and served[-1]["host"] == "127.0.0.1" and served[-1]["port"] == 8790
    assert re.search(r"Sign-in token \(shown once.*\): \S{32}", local.stdout)

    monkeypatch.setenv("POISONGUARD_UI_TOKEN", "short")
    assert run_cli("ui", "--workspace", tmp_path / "ws").exit_code == 2

    monkeypatch.setenv("POISONGUARD_UI_TOKEN", TOKEN)
    remote = run_cli("ui", "--host", "0.0.0.0", "--allow-remote", "--workspace", tmp_path / "ws")
    assert remote.exit_code == 0 and served[-1]["host"] == "0.0.0.0"
    assert "TLS" in remote.stderr and TOKEN not in remote.stdout
