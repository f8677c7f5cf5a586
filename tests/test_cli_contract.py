"""The pieces of the command line's contract, one at a time (tests/test_hostile_cli.py runs them
together): terminal-safe text, output folders, reserved names, full-precision ranges, and the
review page's sign-in throttle per client."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from pipeline.errors import InputError, PoisonguardError
from pipeline.io import read_table
from pipeline.paths import check_output_file, check_output_folder, check_workspace
from pipeline.terminal import terminal_safe
from pipeline.validation import infer_suite
from tests.conftest import SAMPLES

# --- terminal_safe ---------------------------------------------------------------------------

TERMINAL_CASES = [
    {"title": "screen clear and cursor home", "in": "a\x1b[2J\x1b[Hb", "out": "a\\x1b[2J\\x1b[Hb"},
    {"title": "window title", "in": "\x1b]0;owned\x07", "out": "\\x1b]0;owned\\x07"},
    {"title": "carriage return and newline", "in": "ok\rbad\nx", "out": "ok\\x0dbad\\x0ax"},
    {"title": "right-to-left override, zero-width space", "in": "a\u202eb\u200bc", "out": "a\\u202eb\\u200bc"},
    {"title": "C1 control (CSI)", "in": "a\x9b2J", "out": "a\\x9b2J"},
    {"title": "ordinary unicode kept", "in": "Ünïcödé 名前 😀 a b", "out": "Ünïcödé 名前 😀 a b"},
    {"title": "not a string", "in": 1.5, "out": "1.5"},
    {"title": "None", "in": None, "out": ""},
]


@pytest.mark.parametrize("case", TERMINAL_CASES, ids=[c["title"] for c in TERMINAL_CASES])
def test_terminal_safe_shows_control_characters_visibly(case):
    assert terminal_safe(case["in"]) == case["out"]


# --- output folders --------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "batch.csv").write_text("a\n1\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    return tmp_path


PATH_CASES = [
    {"title": "a fresh folder", "out": "out", "ok": True},
    {"title": "nested fresh folders", "out": "out/a/b", "ok": True},
    {"title": "the input's folder", "out": "in", "error": "is the folder of the input"},
    {"title": "the input's folder through a symlink", "out": "link", "error": "is the folder of the input"},
    {"title": "the input's folder, spelled with ..", "out": "out/../in", "error": "is the folder of the input"},
    {"title": "the workspace", "out": "ws", "error": "is inside the workspace"},
    {"title": "inside the workspace", "out": "ws/datasets/x", "error": "is inside the workspace"},
    {"title": "a file", "out": "a_file", "error": "is a file, not a folder"},
    {"title": "under a file", "out": "a_file/out", "error": "cannot be created: .* is a file"},
]


@pytest.mark.parametrize("case", PATH_CASES, ids=[c["title"] for c in PATH_CASES])
def test_output_folders_are_checked(folders, case):
    out = folders / case["out"]
    check = lambda: check_output_folder(out, workspace=folders / "ws", inputs=[folders / "in" / "batch.csv", None])  # noqa: E731
    if case.get("ok"):
        assert check() == out
        assert not out.exists()  # checked, not created
    else:
        with pytest.raises(PoisonguardError, match=case["error"]):
            check()


def test_a_workspace_that_is_a_file_is_refused(folders):
    with pytest.raises(PoisonguardError, match=r"--workspace .*a_file is a file, not a folder"):
        check_workspace(folders / "a_file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused(folders):
    locked = folders / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PoisonguardError, match="cannot be written"):
        check_output_folder(locked / "out", workspace=None)


def test_an_output_file_is_never_its_input(folders):
    with pytest.raises(PoisonguardError, match="is the input"):
        check_output_file(folders / "link" / "batch.csv", inputs=[folders / "in" / "batch.csv"])
    with pytest.raises(PoisonguardError, match="is a folder"):
        check_output_file(folders / "in", inputs=[])
    assert check_output_file(folders / "in" / "suite.json", inputs=[folders / "in" / "batch.csv"])


def test_a_message_naming_a_hostile_path_stays_one_printable_line(folders):
    hostile = folders / "a_file" / "x\x1b[2J\ny"
    with pytest.raises(PoisonguardError) as raised:
        check_output_folder(hostile, workspace=None)
    assert str(raised.value).isprintable()


# --- reserved names --------------------------------------------------------------------------


def test_a_column_named_like_the_tools_batch_column_is_refused(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("deny,poisonguard_batch_id\nno,x\n")
    with pytest.raises(InputError, match="'poisonguard_batch_id', which poisonguard reserves for its outputs"):
        read_table(path)


def test_a_datasets_own_batch_id_column_is_read_as_data(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("deny,batch_id\nno,x\n")
    assert read_table(path).columns == ["deny", "batch_id"]


# --- inferred ranges -------------------------------------------------------------------------


@pytest.mark.parametrize("first", [9_876_543_210, 123_456_789_012, 1.000001, 0.1 + 1e-9])
def test_inferred_ranges_keep_full_precision(first):
    """Were rounded to 6 significant digits: 9876543210..9876543999 became 9.87654e9..9.87654e9."""
    values = [first + i for i in range(0, 790, 7)] if first > 1000 else [first + i * 1e-7 for i in range(50)]
    reference = pd.DataFrame({"id": values, "deny": ["no", "yes"] * (len(values) // 2) + ["no"] * (len(values) % 2)})
    suite = infer_suite(reference, "deny", "t", range_margin=0.0)
    (bounds,) = [e["kwargs"] for e in suite.document["expectations"] if e["type"] == "expect_column_values_to_be_between"]
    assert bounds["min_value"] == min(values) and bounds["max_value"] == max(values)


# --- the review page's sign-in throttle --------------------------------------------------------


def test_one_client_guessing_tokens_does_not_lock_out_another(tmp_path):
    """Was global: ten wrong tokens from anyone, and every steward got 429 for a minute."""
    from fastapi.testclient import TestClient

    from pipeline.config import Settings
    from pipeline.ui import create_app

    token = "a-test-token-that-is-long-enough"
    environ = {k: v for k, v in os.environ.items() if k != "POISONGUARD_DATABASE_URL"}
    app = create_app(Settings.from_environment(tmp_path / "ws", environ), token)
    base = "http://127.0.0.1:8765"
    try:
        guesser = TestClient(app, base_url=base, client=("10.0.0.66", 40000))
        for _ in range(10):
            wrong = guesser.post("/sign-in", data={"token": "x" * 20, "next": "/"}, follow_redirects=False)
            assert wrong.status_code == 403
        assert guesser.post("/sign-in", data={"token": token, "next": "/"}, follow_redirects=False).status_code == 429
        steward = TestClient(app, base_url=base, client=("10.0.0.7", 40001))
        assert steward.post("/sign-in", data={"token": token, "next": "/"}, follow_redirects=False).status_code == 303
    finally:
        app.state.ledger.close()


def test_the_throttle_forgets_old_failures_and_bounds_its_memory():
    from pipeline.ui import security
    from pipeline.ui.security import Guard

    now = [0.0]
    guard = Guard("a-test-token-that-is-long-enough", clock=lambda: now[0])
    for _ in range(security.SIGN_IN_ATTEMPTS_PER_MINUTE):
        guard.failed_attempt("a")
    assert guard.too_many_attempts("a") and not guard.too_many_attempts("b")
    now[0] = 61.0
    assert not guard.too_many_attempts("a")
    for i in range(security.MAX_THROTTLED_CLIENTS + 5):
        guard.failed_attempt(f"client-{i}")
    assert len(guard._failures) == security.MAX_THROTTLED_CLIENTS


def test_a_landing_datasets_out_inside_its_workspace_is_a_config_error(tmp_path):
    from pipeline.landing import ConfigError, DatasetConfig, prepare_landing

    (tmp_path / "landing").mkdir()
    dataset = DatasetConfig(
        name="d",
        config_file="poisonguard.toml",
        reference=SAMPLES / "reference.parquet",
        label="deny",
        landing=str(tmp_path / "landing"),
        out=tmp_path / "ws" / "results",
        workspace=tmp_path / "ws",
    )
    with pytest.raises(ConfigError, match=r"poisonguard.toml: datasets.d.out: the folder .* is inside the workspace"):
        prepare_landing(dataset)
