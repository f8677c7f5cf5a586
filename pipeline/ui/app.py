"""The review page's routes: what ``poisonguard review`` does, in a browser.

    app = create_app(Settings.from_environment(workspace), token)
    uvicorn.run(app, host="127.0.0.1", port=8765)

Every page is rendered on the server from the ledger (``pipeline.review``, the library the CLI
uses); nothing runs in the browser. Each POST answers with a redirect (303) back to the row or
batch and a message shown there once, so a reload never repeats an action.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.config import Settings
from pipeline.errors import PoisonguardError
from pipeline.ledger import BatchRecord, Ledger, LedgerError, NotInLedger, ReviewAction, RowRecord, RowStatus
from pipeline.review import RowDetail, act, batch_summary, open_ledger, row_detail
from pipeline.store import Workspace
from pipeline.ui.security import (
    REPORT_CONTENT_SECURITY_POLICY,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    SESSION_HOURS,
    Guard,
    Session,
    same_origin,
)

logger = logging.getLogger("poisonguard.ui")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_FORM_BYTES = 256 * 1024
MAX_BY = 200
MAX_REASON = 2000
MAX_LISTED = 1000  # rows on one list page; the CLI's json output has them all

_env = Environment(
    loader=PackageLoader("pipeline", "templates/ui"),
    autoescape=True,  # every template, whatever its name
    trim_blocks=True,
    lstrip_blocks=True,
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0: no "-0"
    return str(value)


def _when(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


_env.filters.update(fmt=_fmt, when=_when, path=lambda value: quote(str(value), safe=":"))


class PageError(Exception):
    """Ends a request with an error page (never a traceback)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class SignInRequired(Exception):
    pass


def create_app(settings: Settings, token: str, *, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The review page over the ledger of ``settings``. ``token`` is the shared sign-in token
    (at least 16 characters); ``allowed_hosts`` the names the page answers to in the Host
    header, ``"*"`` for any (a page reached by another name, e.g. through DNS rebinding, is
    refused)."""
    guard = Guard(token)
    ledger = open_ledger(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            ledger.close()

    app = FastAPI(title="poisonguard review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.ledger = ledger
    app.state.guard = guard
    app.add_middleware(SecureResponses, allowed_hosts=tuple(allowed_hosts))

    # --- rendering -------------------------------------------------------------------------

    def render(name: str, session: Session | None, code: int = 200, **context: Any) -> HTMLResponse:
        html = _env.get_template(name).render(
            signed_in=session is not None,
            csrf=guard.csrf_token(session) if session else "",
            steward=session.steward if session else "",
            flashes=guard.take_flashes(session) if session else [],
            **context,
        )
        return HTMLResponse(html, status_code=code)

    def back_to(path: str) -> RedirectResponse:
        return RedirectResponse(path, status_code=303)

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> HTMLResponse:
        session = guard.session(request.cookies.get(SESSION_COOKIE))
        return render("error.html.j2", session, exc.status, title=exc.title, message=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        session = guard.session(request.cookies.get(SESSION_COOKIE))
        title = "Not found" if exc.status_code == 404 else "Request refused"
        message = (
            "There is no such page."
            if exc.status_code == 404
            else f"{exc.detail}"
            if isinstance(exc.detail, str)
            else "The request was refused."
        )
        return render("error.html.j2", session, exc.status_code, title=title, message=message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> HTMLResponse:
        return render("error.html.j2", None, 400, title="Bad request", message="The request was not understood.")

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return back_to(f"/sign-in?next={quote(target, safe='')}")
        return render(
            "error.html.j2",
            None,
            403,
            title="Sign in first",
            message="Your session has ended or you have not signed in; nothing was changed.",
            sign_in=True,
        )

    # --- who is asking ---------------------------------------------------------------------

    def reader(request: Request) -> Session:
        session = guard.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise SignInRequired()
        return session

    async def writer(request: Request) -> tuple[Session, dict[str, list[str]]]:
        """A POST from a page of this site, by a signed-in steward, carrying the session's CSRF token."""
        if not same_origin(request.headers, request.url.scheme):
            raise PageError(403, "Request refused", "The form was not sent from this review page; nothing was changed.")
        session = guard.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise SignInRequired()
        fields = await read_form(request)
        if not guard.csrf_matches(session, _field(fields, "csrf")):
            raise PageError(
                403,
                "Request refused",
                "The form's security token is missing or belongs to another "
                "session (did you sign in again in another tab?). Reload the page and try again; "
                "nothing was changed.",
            )
        return session, fields

    # --- pages -----------------------------------------------------------------------------

    @app.get("/style.css", include_in_schema=False)
    def style() -> Response:
        return Response(_env.get_template("style.css.j2").render(), media_type="text/css")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/sign-in", response_class=HTMLResponse)
    def sign_in_page(request: Request, next: str = "/") -> Response:
        if guard.session(request.cookies.get(SESSION_COOKIE)) is not None:
            return back_to(_local_path(next))
        return render("sign_in.html.j2", None, next=_local_path(next))

    @app.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        if not same_origin(request.headers, request.url.scheme):
            raise PageError(403, "Request refused", "The sign-in form was not sent from this review page.")
        fields = await read_form(request)
        target = _local_path(_field(fields, "next") or "/")
        client = request.client.host if request.client else "unknown"
        if guard.too_many_attempts(client):
            return render(
                "sign_in.html.j2",
                None,
                429,
                next=target,
                error="Too many wrong tokens in the last minute; wait a minute and try again.",
            )
        if not guard.token_matches(_field(fields, "token") or ""):
            guard.failed_attempt(client)
            return render(
                "sign_in.html.j2", None, 403, next=target, error="That is not the token this review page was started with."
            )
        _, cookie = guard.start_session()
        response = back_to(target)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_HOURS * 3600,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/sign-out")
    def sign_out(guarded: tuple[Session, dict[str, list[str]]] = Depends(writer)) -> Response:
        guard.end_session(guarded[0])
        response = back_to("/sign-in")
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/", response_class=HTMLResponse)
    def batches(session: Session = Depends(reader)) -> Response:
        by_dataset: dict[str, list[BatchRecord]] = {}
        for batch in reversed(ledger.list_batches()):  # newest first
            by_dataset.setdefault(batch.dataset, []).append(batch)
        totals = {
            name: {
                key: sum(getattr(b, key) for b in rows)
                for key in ("rows", "accepted", "quarantined", "pending", "released", "rejected")
            }
            for name, rows in by_dataset.items()
        }
        return render(
            "index.html.j2",
            session,
            datasets=sorted(by_dataset.items()),
            totals=totals,
            pending=sum(t["pending"] for t in totals.values()),
        )

    @app.get("/batches/{batch_id}", response_class=HTMLResponse)
    def batch_page(batch_id: str, session: Session = Depends(reader)) -> Response:
        batch = _batch(ledger, batch_id)
        rows = [
            r
            for status in (RowStatus.PENDING, RowStatus.RELEASED, RowStatus.REJECTED)
            for r in ledger.list_rows(batch_id=batch.id, status=status)
        ]
        rows.sort(key=lambda r: (r.status != RowStatus.PENDING, -r.suspicion, r.row_number))
        has_report = _report_path(settings, batch).is_file()
        summary = batch_summary(settings, batch)
        return render(
            "batch.html.j2",
            session,
            batch=batch,
            rows=rows,
            has_report=has_report,
            verdict=summary.get("verdict"),
            roles=_by_role(summary.get("roles") or {}),
        )

    @app.get("/batches/{batch_id}/report")
    def batch_report(batch_id: str, session: Session = Depends(reader)) -> Response:
        batch = _batch(ledger, batch_id)
        path = _report_path(settings, batch)
        if not path.is_file():
            raise PageError(
                404, "Not found", f"The scan report of batch {batch.id} is not in the workspace {settings.workspace}."
            )
        return HTMLResponse(
            path.read_text(encoding="utf-8"), headers={"content-security-policy": REPORT_CONTENT_SECURITY_POLICY}
        )

    @app.get("/rows", response_class=HTMLResponse)
    def rows_page(dataset: str = "", status: str = RowStatus.PENDING.value, session: Session = Depends(reader)) -> Response:
        if status not in {s.value for s in RowStatus}:
            raise PageError(
                400, "Bad request", f"Unknown row status {status!r}; use one of: {', '.join(s.value for s in RowStatus)}."
            )
        rows = sorted(ledger.list_rows(dataset=dataset or None, status=status), key=lambda r: (-r.suspicion, r.id))
        datasets = sorted({b.dataset for b in ledger.list_batches()})
        return render(
            "rows.html.j2",
            session,
            rows=rows[:MAX_LISTED],
            total=len(rows),
            dataset=dataset,
            status=status,
            statuses=[s.value for s in RowStatus],
            datasets=datasets,
        )

    @app.get("/rows/{row_id}", response_class=HTMLResponse)
    def row_page(row_id: str, session: Session = Depends(reader)) -> Response:
        record = _row(ledger, row_id)
        detail, problem = None, None
        try:
            detail = row_detail(settings, ledger, record.id)
        except PoisonguardError as exc:
            problem = str(exc)
        return render(
            "row.html.j2",
            session,
            row=record,
            detail=detail,
            problem=problem,
            comparison=_comparison(detail),
            scores=_scores(record.scores),
            distances=[] if detail is None or detail.neighbours.empty else list(detail.neighbours["distance"]),
            batch=ledger.get_batch(record.batch_id),
        )

    @app.get("/ledger", response_class=HTMLResponse)
    def ledger_page(session: Session = Depends(reader)) -> Response:
        problems = ledger.verify()
        return render("ledger.html.j2", session, problems=problems, head=ledger.head(), url=ledger.url)

    # --- actions ---------------------------------------------------------------------------

    @app.post("/rows/{row_id}/review")
    def review_row(row_id: str, guarded: tuple[Session, dict[str, list[str]]] = Depends(writer)) -> Response:
        session, fields = guarded
        record = _row(ledger, row_id)
        review(session, fields, [record.id])
        return back_to(f"/rows/{quote(record.id, safe=':')}")

    @app.post("/batches/{batch_id}/review")
    def review_batch(batch_id: str, guarded: tuple[Session, dict[str, list[str]]] = Depends(writer)) -> Response:
        session, fields = guarded
        batch = _batch(ledger, batch_id)
        ids = list(dict.fromkeys(fields.get("row", [])))
        foreign = [i for i in ids if i.rsplit(":", 1)[0] != batch.id]
        if not ids:
            guard.flash(session, "error", "Select the rows to release or reject first; nothing was changed.")
        elif foreign:
            guard.flash(session, "error", f"{foreign[0]} is not a row of batch {batch.id}; nothing was changed.")
        else:
            review(session, fields, ids)
        return back_to(f"/batches/{quote(batch.id, safe='')}")

    def review(session: Session, fields: dict[str, list[str]], ids: list[str]) -> None:
        """Release or reject ``ids`` as the form says; the outcome becomes the session's message."""
        action, by, reason = (_field(fields, k).strip() for k in ("action", "by", "reason"))
        if action not in {a.value for a in ReviewAction}:
            guard.flash(session, "error", "Choose release or reject; nothing was changed.")
            return
        if not by or not reason:
            guard.flash(
                session,
                "error",
                "Say who you are and why: 'by' and 'reason' are recorded with every review. Nothing was changed.",
            )
            return
        if len(by) > MAX_BY or len(reason) > MAX_REASON:
            guard.flash(
                session,
                "error",
                f"'by' may have at most {MAX_BY} characters and 'reason' at most {MAX_REASON}. Nothing was changed.",
            )
            return
        session.steward = by
        done = ReviewAction(action).past_tense
        try:
            records = act(settings, ledger, action, ids, by, reason)
        except LedgerError as exc:
            guard.flash(session, "error", str(exc))
            return
        except Exception as exc:
            # act writes the ledger first, then mirrors to MLflow: find out which of them failed.
            logger.exception("review of %s failed", ", ".join(ids))
            mine = ledger.get_row(ids[0]).review
            if mine is not None and (mine.action.value, mine.by, mine.reason) == (action, by, reason):
                guard.flash(
                    session,
                    "error",
                    f"{done.capitalize()} {len(ids)} row(s) in the ledger, but mirroring "
                    f"the action to the batch's MLflow run failed ({type(exc).__name__}: {exc}). The ledger "
                    "is the record of truth.",
                )
            else:
                guard.flash(
                    session, "error", f"The review could not be recorded ({type(exc).__name__}); nothing was changed."
                )
            return
        guard.flash(
            session,
            "ok",
            f"{done.capitalize()} {len(records)} row(s): {', '.join(r.row_id for r in records)}. By {by}: {reason}",
        )

    return app


class SecureResponses:
    """Puts the security headers on every response (error pages and redirects included), answers
    only to the allowed host names, and turns an unexpected error into a plain 500 page."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if "*" not in self.allowed_hosts and _host_name(host) not in self.allowed_hosts:
            await HTMLResponse(
                _plain_page("Unknown host", "This review page does not answer to that host name."), status_code=400
            )(scope, receive, send_secured)
            return
        try:
            await self.app(scope, receive, send_secured)
        except Exception:
            logger.exception("the review page failed on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await HTMLResponse(
                _plain_page(
                    "Something went wrong",
                    "The page failed; the details are in the server's log. Nothing was changed by this request.",
                ),
                status_code=500,
            )(scope, receive, send_secured)


async def read_form(request: Request) -> dict[str, list[str]]:
    """An urlencoded form body (what HTML forms send), at most MAX_FORM_BYTES."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise PageError(415, "Request refused", "Forms must be sent as application/x-www-form-urlencoded.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "Request refused", "The form is too large; nothing was changed.")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=5000)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "Bad request", "The form could not be read; nothing was changed.") from None


def _field(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name)
    return values[0] if values else ""


def _local_path(target: str) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if re.fullmatch(r"/(?![/\\])[^\s\\]*", target or ""):
        return target
    return "/"


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _batch(ledger: Ledger, batch_id: str) -> BatchRecord:
    try:
        return ledger.get_batch(batch_id)
    except NotInLedger as exc:
        raise PageError(404, "Not found", str(exc)) from None


def _row(ledger: Ledger, row_id: str) -> RowRecord:
    try:
        return ledger.get_row(row_id)
    except NotInLedger as exc:
        raise PageError(404, "Not found", str(exc)) from None


def _report_path(settings: Settings, batch: BatchRecord) -> Path:
    return Workspace(settings.workspace).batch_dir(batch.dataset, batch.sha256) / "report.html"


def _by_role(roles: dict[str, str]) -> dict[str, list[str]]:
    """The columns of a scan's ``roles`` (pipeline.roles) grouped by role; empty for a scan
    recorded before roles."""
    grouped: dict[str, list[str]] = {}
    for column, role in roles.items():
        grouped.setdefault(str(role), []).append(str(column))
    return grouped


def _comparison(detail: RowDetail | None) -> list[dict[str, Any]]:
    """The row's values beside its trusted neighbours, one line per column; columns the
    detectors do not use (protected ones) come last, without neighbours."""
    if detail is None or not detail.values:
        return []
    neighbours = detail.neighbours
    columns = [c for c in neighbours.columns if c != "distance"] if not neighbours.empty else []
    lines = [
        {
            "column": c,
            "value": detail.values.get(c),
            "neighbours": list(neighbours[c]),
            "feature": True,
            "label": c == detail.label,
        }
        for c in columns
    ]
    lines += [
        {"column": c, "value": v, "neighbours": [], "feature": False, "label": c == detail.label}
        for c, v in detail.values.items()
        if c not in columns and c != "row_number"
    ]
    return lines


def _scores(scores: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(detector, calibrated, raw) from the ledger's ``{name: calibrated, name_raw: raw}``."""
    names = [k for k in scores if not k.endswith("_raw")]
    return [(name, scores.get(name), scores.get(f"{name}_raw")) for name in names]


def _plain_page(title: str, message: str) -> str:
    return _env.get_template("error.html.j2").render(
        title=title, message=message, signed_in=False, flashes=[], csrf="", steward=""
    )
