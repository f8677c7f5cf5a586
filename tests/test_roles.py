"""Column roles (pipeline.roles): inference, the suite, the checks of id and time columns, unseen
category levels, and a scan of a table with id, time, code and free-text columns."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import scan
from pipeline.config import Settings
from pipeline.errors import InputError, PoisonguardError, SuiteError
from pipeline.findings import findings_frame
from pipeline.io import ROW_NUMBER, read_table
from pipeline.roles import Role, RoleRules, check_roles, explicit_roles, infer_roles
from pipeline.scan_run import evaluate
from pipeline.validation import infer_suite, suite_from_document, with_roles

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
LIGHT_DETECTORS = {
    "outliers": {"method": "hbos", "n_folds": 2},
    "label_consistency": {"model": "logistic", "n_folds": 2},
    "trigger": {},
    "duplicates": {},
}


# --- inference ---------------------------------------------------------------------------------


def _table(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "application_id": np.arange(1000, 1000 + n),
            "received": [(pd.Timestamp("2026-01-01") + pd.Timedelta(hours=i)).isoformat() for i in range(n)],
            "comment": [f"the applicant called about letter number {i} twice" for i in range(n)],
            "ref_code": [f"X{(7 * i) % 90}Q" for i in range(n)],  # not unique, too many levels for a category
            "income": rng.normal(50, 10, n),  # unique floats: a quantity, not an id
            "region": rng.choice(["north", "south", "east"], n),
            "age": rng.integers(18, 80, n),
            "deny": rng.choice(["yes", "no"], n),
        }
    )


def test_infer_roles_tells_ids_times_text_and_high_cardinality_codes_from_features():
    roles = infer_roles(_table(), "deny")
    assert roles == {
        "application_id": Role.ID,
        "received": Role.TIME,
        "comment": Role.TEXT,
        "ref_code": Role.IGNORED,
        "income": Role.FEATURE,
        "region": Role.FEATURE,
        "age": Role.FEATURE,
        "deny": Role.LABEL,
    }


def test_infer_roles_explicit_and_protected_win():
    roles = infer_roles(_table(), "deny", protected=["region"], explicit={"income": Role.IGNORED})
    assert roles["region"] is Role.PROTECTED and roles["income"] is Role.IGNORED


def test_a_20_digit_id_that_a_float_collapsed_is_still_an_id_from_its_text():
    ids = [str(10**19 + i) for i in range(60)]
    typed = pd.DataFrame({"app": np.array(ids, dtype=float), "y": ["a", "b"] * 30})
    assert typed["app"].nunique() < 60  # float64 cannot tell them apart
    assert infer_roles(typed, "y")["app"] is Role.FEATURE
    assert infer_roles(typed, "y", exact=pd.DataFrame({"app": ids, "y": typed["y"]}))["app"] is Role.ID


def test_too_few_rows_say_nothing_about_ids():
    assert infer_roles(_table(10), "deny")["application_id"] is Role.FEATURE


def test_explicit_roles_refuse_a_column_given_two_roles():
    assert explicit_roles(id=["a"], time=["t"]) == {"a": Role.ID, "t": Role.TIME}
    with pytest.raises(InputError, match="two roles"):
        explicit_roles(id=["a"], ignore=["a"])


# --- the suite -------------------------------------------------------------------------------------


def test_inferred_suite_records_roles_and_sets_no_rule_on_carried_columns():
    frame = _table()
    roles = infer_roles(frame, "deny")
    suite = infer_suite(frame, "deny", "t", roles=roles)
    named = [e["kwargs"].get("column") for e in suite.document["expectations"]]
    for carried in ("application_id", "received", "comment", "ref_code"):
        assert carried not in named
    assert "income" in named and "region" in named
    assert suite.roles == roles
    column_set = suite.document["expectations"][0]["kwargs"]["column_set"]
    assert "application_id" in column_set  # still expected to be there


def test_with_roles_drops_rules_on_carried_columns_of_an_existing_suite():
    frame = _table()
    suite = infer_suite(frame, "deny", "t")  # a suite written without roles: a range over the ids
    assert any(e["kwargs"].get("column") == "application_id" for e in suite.document["expectations"])
    changed = with_roles(suite, {"application_id": Role.ID, "deny": Role.LABEL})
    assert not any(e["kwargs"].get("column") == "application_id" for e in changed.document["expectations"])
    assert changed.roles["application_id"] is Role.ID


def test_a_suite_with_an_unknown_role_is_refused_with_the_roles_listed():
    document = {"name": "s", "expectations": [], "meta": {"poisonguard": {"roles": {"a": "key"}}}}
    with pytest.raises(SuiteError, match=r"'key'.*one of label, feature"):
        suite_from_document(document, "s.json")


# --- checks of id and time columns -----------------------------------------------------------------


def _reasons(records: list[dict]) -> dict[int, str]:
    frame = findings_frame(records)
    return dict(zip(frame[ROW_NUMBER], frame["reason_code"]))


def test_id_checks_find_missing_repeated_and_already_accepted_ids():
    batch = pd.DataFrame({"app": ["a1", None, "a3", "a1", "a9", "a5"], ROW_NUMBER: range(6)})
    found = _reasons(check_roles(batch, {"app": Role.ID}, arrival=NOW, accepted_ids={"app": {"a9"}}))
    assert found == {1: "missing_id", 3: "duplicate_id", 4: "duplicate_id"}


def test_an_id_of_another_form_than_every_trusted_id_is_a_finding():
    from pipeline.roles import id_shape

    shape = id_shape(pd.Series(["APP-000123", "APP-9", "APP-0042"]))
    batch = pd.DataFrame({"app": ["APP-77", "APP-x1", "77", "APP-100000"], ROW_NUMBER: range(4)})
    assert _reasons(check_roles(batch, {"app": Role.ID}, arrival=NOW, id_shapes={"app": shape})) == {
        1: "bad_id_format",
        2: "bad_id_format",
    }
    assert id_shape(pd.Series(["3f2a-11", "a9-b2c"])) is None  # no single form: nothing to check


def test_ids_compare_as_text_across_types():
    batch = pd.DataFrame({"app": [5.0, 6.0], ROW_NUMBER: range(2)})  # integers read as floats
    assert _reasons(check_roles(batch, {"app": Role.ID}, arrival=NOW, accepted_ids={"app": {"5"}})) == {0: "duplicate_id"}


def test_time_checks_find_unparseable_future_and_too_old_times():
    batch = pd.DataFrame(
        {
            "t": ["2026-12-01T10:00:00Z", "not a date", "2027-12-03", "2001-01-01", None, "2026-12-04T01:00:00"],
            ROW_NUMBER: range(6),
        }
    )
    found = _reasons(
        check_roles(batch, {"t": Role.TIME}, arrival=NOW, rules=RoleRules(max_age_days=365, future_tolerance_hours=24))
    )
    # 2026-12-04T01:00 is 13 h past the arrival: within the clock-skew tolerance
    assert found == {1: "bad_time", 2: "future_time", 3: "outside_window"}


def test_settings_read_the_unseen_level_policy_and_the_time_window():
    settings = Settings.from_environment(
        "/tmp/ws", {"POISONGUARD_UNSEEN_LEVELS": "alarm", "POISONGUARD_TIME_WINDOW_DAYS": "30"}
    )
    assert settings.unseen_levels == "alarm" and settings.role_rules.max_age_days == 30
    with pytest.raises(PoisonguardError, match="POISONGUARD_UNSEEN_LEVELS must be 'hold' or 'alarm'"):
        Settings.from_environment("/tmp/ws", {"POISONGUARD_UNSEEN_LEVELS": "ignore"})


# --- a scan of a table with id, time, code and free-text columns -----------------------------------


def _real_table(frame: pd.DataFrame, first_id: int, newest: pd.Timestamp, rng) -> pd.DataFrame:
    out = frame.reset_index(drop=True).copy()
    out.insert(0, "application_id", [str(first_id + i) for i in range(len(out))])
    out["received"] = [
        (newest - pd.Timedelta(minutes=int(m))).strftime("%Y-%m-%dT%H:%M:%SZ")
        for m in np.sort(rng.integers(0, 60 * 24 * 20, len(out)))[::-1]
    ]
    out["zip"] = rng.choice(["00501", "02134", "02215", "90210"], len(out))
    out["product"] = rng.choice(["fixed30", "fixed15", "arm5"], len(out))
    out["comment"] = [f"note {i}: " + " ".join(rng.choice(["tax", "call", "letter", "late"], 6)) for i in range(len(out))]
    return out


@dataclasses.dataclass
class Scanned:
    trusted: scan.TrustedData
    detectors: dict
    checks: dict
    settings: Settings
    request: scan.ScanRequest
    batch: pd.DataFrame
    folder: Path

    def run(self, frame: pd.DataFrame, name: str, settings: Settings | None = None):
        path = self.folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        settings = settings or self.settings
        trusted = dataclasses.replace(self.trusted, unseen_levels=settings.unseen_levels)
        loaded = read_table(path)
        judged = evaluate(loaded, trusted, settings, detectors=self.detectors, checks=self.checks)
        outputs = scan.build_outputs(
            dataclasses.replace(self.request, batch=path),
            settings,
            loaded,
            trusted,
            judged.conformed,
            judged.outcome,
            judged.decisions,
            [],
            judged.checks,
            np.array([]),
            "t",
            scan.now(),
            judged.verdict,
        )
        table = judged.decisions.table.set_index(ROW_NUMBER).sort_index()
        self.report_html = outputs.report_html
        return table, outputs.summary, judged.outcome


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    folder = tmp_path_factory.mktemp("roles")
    rng = np.random.default_rng(3)
    now = pd.Timestamp.now(tz="UTC").floor("min")
    reference = _real_table(
        pd.read_parquet(SAMPLES / "reference.parquet").sample(400, random_state=0), 10**19, now - pd.Timedelta(days=30), rng
    )
    batch = _real_table(
        pd.read_csv(SAMPLES / "batch_01_clean.csv").iloc[:100], 10**19 + 10_000, now - pd.Timedelta(hours=2), rng
    )
    reference.to_csv(folder / "reference.csv", index=False)
    request = scan.ScanRequest(
        batch=folder / "batch.csv",
        reference=folder / "reference.csv",
        label="deny",
        out=folder / "out",
        dataset="roles",
        roles=(("afam", "protected"),),
    )
    settings = dataclasses.replace(Settings.from_environment(folder / "ws", environ={}), detectors=LIGHT_DETECTORS)
    trusted = scan.load_trusted(request, settings)
    return Scanned(
        trusted, scan.fit_detectors(trusted, settings), scan.fit_checks(trusted), settings, request, batch, folder
    )


def test_roles_are_inferred_and_carried_columns_are_never_features(scanned):
    roles = scanned.trusted.roles
    assert roles["application_id"] is Role.ID and roles["received"] is Role.TIME
    assert roles["comment"] is Role.TEXT and roles["afam"] is Role.PROTECTED
    assert roles["product"] is Role.FEATURE and roles["zip"] is Role.FEATURE
    features = set(scanned.trusted.spec.features)
    assert not features & {"application_id", "received", "comment", "afam"}
    assert {"product", "zip", "pirat"} <= features
    assert "zip" in scanned.trusted.spec.categorical  # "00501": a code, not a quantity


def test_a_clean_batch_with_id_and_time_columns_is_not_held_for_them(scanned):
    table, summary, outcome = scanned.run(scanned.batch, "clean")
    carried = {"application_id", "received", "comment"}
    assert not set(outcome.row_findings["column"].dropna()) & carried
    assert table["quarantined"].sum() <= 2, summary["checks"]
    drift = [a for a in summary["alarms"] if a["check"] == "drift"]
    assert not any(c in a["message"] for a in drift for c in carried)
    assert summary["roles"]["application_id"] == "id"
    assert "Columns and their roles" in scanned.report_html
    assert "<td>application_id</td><td>id</td>" in scanned.report_html


def test_repeated_ids_future_times_and_unseen_levels_are_held_with_their_reason(scanned):
    clean, _, _ = scanned.run(scanned.batch, "clean2")
    bad = scanned.batch.copy()
    next_year = (pd.Timestamp.now(tz="UTC") + pd.DateOffset(years=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    bad.loc[50, "application_id"] = bad.loc[10, "application_id"]
    bad.loc[51, "application_id"] = str(10**19 + 7)  # a trusted reference row's id
    bad.loc[[60, 61], "received"] = next_year
    bad.loc[[70, 71, 72], "product"] = "balloon"
    table, _summary, _ = scanned.run(bad, "planted")
    expected = {
        50: "repeats an id earlier in this batch",
        51: "already accepted",
        60: "in the future",
        61: "in the future",
        70: "product='balloon'",
        71: "product='balloon'",
        72: "product='balloon'",
    }
    for row, reason in expected.items():
        assert table.at[row, "quarantined"], row
        assert any(reason in r for r in table.at[row, "reasons"]), table.at[row, "reasons"]
    others = table.drop(index=list(expected))
    assert others["quarantined"].to_numpy().tolist() == clean.drop(index=list(expected))["quarantined"].tolist()


def test_unseen_levels_under_the_alarm_policy_accept_the_rows_and_raise_an_alarm(scanned):
    bad = scanned.batch.copy()
    bad.loc[[70, 71], "product"] = "balloon"
    settings = dataclasses.replace(scanned.settings, unseen_levels="alarm")
    table, summary, _outcome = scanned.run(bad, "alarm", settings)
    assert not any("balloon" in r for row in (70, 71) for r in table.at[row, "reasons"])
    alarms = [a for a in summary["alarms"] if a["check"] == "unseen_levels"]
    assert alarms and "product: 2 row(s) with 'balloon'" in alarms[0]["message"]


# --- the command line ------------------------------------------------------------------------------


def test_profile_prints_the_inferred_roles_the_first_time_and_writes_them_into_the_suite(run_cli, tmp_path):
    reference = tmp_path / "reference.csv"
    _table().to_csv(reference, index=False)
    out = tmp_path / "suite.json"
    first = run_cli("profile", reference, "--label", "deny", "--out", out, "--ignore", "age")
    assert first.exit_code == 0, first.stderr
    assert "id: application_id" in first.stdout and "time: received" in first.stdout
    assert "ignored: ref_code, age" in first.stdout
    assert json.loads(out.read_text())["meta"]["poisonguard"]["roles"]["application_id"] == "id"
    again = run_cli("profile", reference, "--label", "deny", "--out", out, "--ignore", "age")
    assert again.exit_code == 0 and "Column roles" not in again.stdout


def test_a_role_for_a_column_that_is_not_there_is_one_clear_error(run_cli, tmp_path):
    reference = tmp_path / "reference.csv"
    _table().to_csv(reference, index=False)
    result = run_cli("profile", reference, "--label", "deny", "--out", tmp_path / "s.json", "--id", "nope")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"poisonguard: error: Column(s) not in the reference {reference}: 'nope'."


# --- the landing config ----------------------------------------------------------------------------

CONFIG = f"""\
[datasets.loans]
reference = "{SAMPLES}/reference.parquet"
label = "deny"
landing = "landing"
out = "out"
"""


def test_the_landing_config_sets_roles_like_the_command_line(tmp_path):
    from flows.landing import scan_request
    from pipeline.landing import ConfigError, load_config

    path = tmp_path / "poisonguard.toml"
    path.write_text(CONFIG + 'id = ["application_id"]\ntime = ["received"]\nignore = ["batch_tag"]\n')
    dataset = load_config(path).dataset("loans")
    assert dataset.roles == (("application_id", "id"), ("received", "time"), ("batch_tag", "ignored"))
    assert scan_request(dataset, tmp_path / "b.csv", tmp_path / "o").roles == dataset.roles
    path.write_text(CONFIG + 'id = "application_id"\n')
    with pytest.raises(ConfigError, match=r"datasets.loans.id: must be a list of column names; got 'application_id'"):
        load_config(path)


def test_scan_refuses_a_role_for_a_column_the_reference_lacks_before_starting_anything(run_cli, tmp_path):
    result = run_cli(
        "scan",
        SAMPLES / "batch_01_clean.csv",
        "--reference",
        SAMPLES / "reference.parquet",
        "--label",
        "deny",
        "--out",
        tmp_path / "out",
        "--workspace",
        tmp_path / "ws",
        "--time",
        "nope",
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"poisonguard: error: Column(s) 'nope' given a role are not in the reference {SAMPLES / 'reference.parquet'}."
    )
    assert not (tmp_path / "ws").exists()
