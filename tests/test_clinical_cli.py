"""Issue 10 through the public CLI with a fixed clock (`--today`): one test per rule and bullet.

Each test names the seed (shared/seeds) and the sentence its expected window and protocol come from.
Studies are seeded as the pipeline writes its checks (tests/nodeutil.add_study_check); the node-driven
scenarios (spine study, unverifiable accepted, partial recall, scanner change) are in test_clinical_node.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from msfollowup.site.config import load_config
from msfollowup.db import Database
from nodeutil import add_study_check

TODAY = "2026-06-15"
PID = "PAT-CLIN-1"


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "msfollowup.toml"
    path.write_text('[storage]\ndata_dir = "var"\n', encoding="utf-8")
    return path


def run(config: Path, *args: str, today: str = TODAY) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "msfollowup.cli", *args, "--config", str(config), "--today", today]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=config.parent)


def ok(config: Path, *args: str, today: str = TODAY) -> Any:
    proc = run(config, *args, today=today)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def due(config: Path, today: str = TODAY) -> dict[str, dict[str, Any]]:
    return {d["purpose"]: d for d in ok(config, "due", "--json", today=today) if d["patient_id"] == PID}


def seed(config: Path, uid: str, date: str, verdict: str = "compliant", failed: tuple[str, ...] = ()) -> None:
    db = Database(load_config(config).storage.database_url)
    add_study_check(db, PID, uid, 1, date, verdict, list(failed))
    db.dispose()


def rules_of(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in item["rules"]}


def test_second_relapse_schedules_its_own_urgent_exam(config: Path) -> None:
    """004: new brain symptoms in known MS -> "MRI head without and with IV contrast"; a second relapse
    after the first was imaged must schedule its own exam (issue 10: "A second relapse is lost")."""
    ok(config, "patient", "therapy", PID, "--drug", "ocrelizumab", "--start", "2020-01-01")
    ok(config, "patient", "event", PID, "relapse-brain", "--date", "2026-03-01", "--note", "optic neuritis")
    first = due(config, today="2026-03-02")["brain"]
    assert (first["earliest"], first["target"], first["latest"]) == ("2026-03-01", "2026-03-01", "2026-03-15")
    assert "new-deficit-brain" in first["rule_ids"] and rules_of(first)["new-deficit-brain"]["source"].startswith("004")
    seed(config, "1.2.826.0.1.99.1", "20260305")  # the relapse scan, compliant
    assert "new-deficit-brain" not in due(config, today="2026-03-10")["brain"]["rule_ids"]
    ok(config, "patient", "event", PID, "relapse-brain", "--date", "2026-06-10")
    second = due(config)["brain"]
    assert (second["target"], second["latest"]) == ("2026-06-10", "2026-06-24")
    assert second["rule_ids"][0] == "new-deficit-brain"
    assert second["profile_id"] == "ms-brain-new-deficit"


def test_gadolinium_contraindication_with_myelopathic_deficit_has_no_contrast(config: Path) -> None:
    """004: new myelopathic deficit -> "MRI cervical and thoracic spine"; 004 FAQ: with a gadolinium
    contraindication the spine is imaged without contrast, and the worklist asks for no contrast agent."""
    ok(config, "patient", "set", PID, "--flag", "gadolinium_contraindicated", "--flag", "spinal_symptoms")
    ok(config, "patient", "event", PID, "relapse-spinal", "--date", "2026-06-14")
    spine = due(config)["spine"]
    assert spine["profile_id"] == "ms-spine-new-deficit~nogd"
    assert (spine["target"], spine["latest"]) == ("2026-06-14", "2026-06-28")
    assert not any("contrast" in s.lower() or "T1" in s for s in spine["required_series"]), spine["required_series"]
    assert any("cervical" in s and "thoracic" in s for s in spine["required_series"])
    items = [i for i in ok(config, "worklist", "--json") if i["patient_id"] == PID and i["purpose"] == "spine"]
    assert len(items) == 1 and items[0]["profile_id"] == "ms-spine-new-deficit~nogd"
    brain = due(config)["brain"]
    assert "T1" not in " ".join(brain["required_series"])  # every contrast requirement is removed, brain too


def test_brand_name_natalizumab_gets_pml_screening(config: Path) -> None:
    """002: "For natalizumab-treated patients ... at high risk of PML (JCV seropositive, treatment duration
    >=18 months), we recommend brain MRI screening every 3-4 months" -- also when typed as Tysabri."""
    out = ok(config, "patient", "therapy", PID, "--drug", "Tysabri", "--start", "2024-01-01")
    assert out["plan"]["dmt"] == "natalizumab"
    ok(config, "patient", "jcv", PID, "positive", "--date", "2026-01-10")
    seed(config, "1.2.826.0.1.99.2", "20260501")
    brain = due(config)["brain"]
    assert (brain["earliest"], brain["target"], brain["latest"]) == ("2026-08-01", "2026-08-16", "2026-09-01")
    assert brain["rule_ids"][0] == "natalizumab-high-risk"
    assert any(s == "DWI" for s in brain["required_series"])


def test_dimethyl_fumarate_gets_pml_monitoring(config: Path) -> None:
    """002: "MRI-based monitoring for early PML detection is appropriate not only for patients taking
    natalizumab, but also for other DMDs, including alemtuzumab, rituximab and dimethyl fumarate"."""
    ok(config, "patient", "therapy", PID, "--drug", "Tecfidera", "--start", "2022-01-01")
    seed(config, "1.2.826.0.1.99.3", "20260301")
    brain = due(config)["brain"]
    assert "pml-risk-drug" in brain["rule_ids"]
    assert "DWI" in brain["required_series"] and "Post-contrast T1" in brain["required_series"]
    assert rules_of(brain)["pml-risk-drug"]["source"].startswith("002")


def test_unknown_drug_is_refused_with_the_closest_names(config: Path) -> None:
    """Issue 10 item 2: an unknown drug name is refused with the closest names; unlisted is explicit."""
    proc = run(config, "patient", "therapy", PID, "--drug", "natalizumap", "--start", "2024-01-01")
    assert proc.returncode == 2 and "natalizumab" in proc.stderr and "unknown drug" in proc.stderr
    out = ok(config, "patient", "therapy", PID, "--drug", "unlisted:trialdrug-x", "--start", "2024-01-01")
    assert out["plan"]["dmt"] == "unlisted:trialdrug-x"


def test_inconsistent_therapy_dates_are_refused_naming_the_fields(config: Path) -> None:
    """Issue 10 item 2: a stop before the start, or a new therapy starting before the switch, is refused."""
    proc = run(config, "patient", "therapy", PID, "--drug", "fingolimod", "--start", "2025-05-01", "--stop", "2025-01-01")
    assert proc.returncode == 2 and "--stop" in proc.stderr and "--start" in proc.stderr
    ok(config, "patient", "therapy", PID, "--drug", "natalizumab", "--start", "2024-01-01")
    proc = run(config, "patient", "therapy", PID, "--drug", "fingolimod", "--start", "2023-06-01", "--replaces")
    assert proc.returncode == 2 and "--start" in proc.stderr and "before the start of the replaced" in proc.stderr
    proc = run(config, "patient", "therapy", PID, "--drug", "fingolimod", "--start", "2025-06-01")
    assert proc.returncode == 2 and "--replaces" in proc.stderr


def test_override_attempt_on_pml_surveillance_is_refused(config: Path) -> None:
    """002: high PML risk -> "brain MRI screening every 3-4 months"; issue 10 item 6: a manual override
    never turns it into yearly; the refusal names the rule."""
    ok(config, "patient", "therapy", PID, "--drug", "natalizumab", "--start", "2024-01-01")
    ok(config, "patient", "jcv", PID, "positive", "--date", "2026-01-10")
    proc = run(config, "patient", "set", PID, "--override-interval", "12")
    assert proc.returncode == 2 and "natalizumab-high-risk" in proc.stderr and "override" in proc.stderr
    seed(config, "1.2.826.0.1.99.4", "20260501")
    assert due(config)["brain"]["target"] == "2026-08-16"


def test_override_decides_where_no_safety_rule_applies_and_says_so(config: Path) -> None:
    """000: "long-term stable" intervals are site/clinician policy: an override may set them, and due says so."""
    ok(config, "patient", "therapy", PID, "--drug", "ocrelizumab", "--start", "2018-01-01")
    ok(config, "patient", "set", PID, "--override-interval", "18")
    seed(config, "1.2.826.0.1.99.5", "20260101")
    brain = due(config)["brain"]
    assert brain["target"] == "2027-07-01" and brain["override"]["interval_months"] == 18.0
    assert "override-interval" in brain["rule_ids"] and "override" in brain["reason"]


def test_switch_from_natalizumab_13_months_ago_no_longer_3_monthly(config: Path) -> None:
    """002: "brain MRI every 3-4 months for up to 12 months, is required in patients who switch from
    natalizumab to other therapeutics" -- 13 months after the switch the rule has ended."""
    ok(config, "patient", "therapy", PID, "--drug", "natalizumab", "--start", "2021-01-01")
    ok(config, "patient", "therapy", PID, "--drug", "fingolimod", "--start", "2025-05-15", "--replaces")
    seed(config, "1.2.826.0.1.99.12", "20250520")  # the scan at the switch
    seed(config, "1.2.826.0.1.99.6", "20260401")  # the last scan under the switch rule (month 10.5)
    brain = due(config)["brain"]
    assert "switch-from-natalizumab" not in brain["rule_ids"]
    # Not 3-4 monthly any more: the next scan is the 12-month follow-up of the new drug (002: "Follow-up
    # brain MRI ... should be performed 12 months after starting treatment").
    assert brain["target"] == "2026-05-15" and brain["rule_ids"] == ["treatment-start"]
    early = due(config, today="2025-09-01")["brain"]  # 3.5 months after the switch: still 3-4 monthly
    assert early["rule_ids"][0] == "switch-from-natalizumab" and early["target"] == "2025-09-04"


def test_high_infection_risk_switch_scans_at_discontinuation_and_after_new_start(config: Path) -> None:
    """002: "In patients at high risk of developing opportunistic infections who are switching DMDs, we
    recommend brain MRI at the time that the current treatment is discontinued and after the new
    treatment is started"."""
    ok(config, "patient", "therapy", PID, "--drug", "fingolimod", "--start", "2020-01-01")
    seed(config, "1.2.826.0.1.99.7", "20260101")
    ok(config, "patient", "therapy", PID, "--drug", "fingolimod", "--start", "2020-01-01", "--stop", "2026-06-01")
    stop = due(config)["brain"]
    assert stop["rule_ids"][0] == "switch-discontinuation"
    assert (stop["target"], stop["latest"]) == ("2026-06-01", "2026-06-15")
    seed(config, "1.2.826.0.1.99.8", "20260603")
    ok(config, "patient", "therapy", PID, "--drug", "ocrelizumab", "--start", "2026-07-01", today="2026-07-01")
    after = due(config, today="2026-07-02")["brain"]
    assert after["rule_ids"][0] == "switch-new-drug-start" and after["target"] == "2026-09-01"


def test_interim_scan_at_month_2_does_not_move_the_6_month_reference_scan(config: Path) -> None:
    """002: "scans at 6 months after the start of treatment should be considered" (reference scan), and
    follow-up "12 months after starting treatment"; an interim scan does not move the reference."""
    ok(config, "patient", "therapy", PID, "--drug", "ocrelizumab", "--start", "2026-01-15")
    seed(config, "1.2.826.0.1.99.9", "20260110")  # pre-treatment scan
    seed(config, "1.2.826.0.1.99.10", "20260315")  # interim scan at month 2
    brain = due(config, today="2026-03-20")["brain"]
    assert (brain["earliest"], brain["target"], brain["latest"]) == ("2026-06-15", "2026-07-15", "2026-08-15")
    assert brain["rule_ids"] == ["treatment-start"]


def test_due_json_has_profile_series_window_rules_with_sources(config: Path) -> None:
    """Interface contract: per patient and purpose, profile, required series, window, deciding rules with
    their source, recall items and override."""
    ok(config, "patient", "therapy", PID, "--drug", "ocrelizumab", "--start", "2018-01-01")
    seed(config, "1.2.826.0.1.99.11", "20260101", "non-compliant", ("sequence.t1_post",))
    brain = due(config)["brain"]
    for key in ("profile", "required_series", "window", "rules", "recall_items", "override"):
        assert key in brain
    assert brain["recall_items"] == ["sequence.t1_post"] and brain["profile"] == "ms-brain-routine@t1_post"
    assert brain["required_series"] == ["Post-contrast T1"]
    assert all(r["source"] for r in brain["rules"])


def test_csv_import_takes_dated_events_and_refuses_inconsistent_rows(config: Path, tmp_path: Path) -> None:
    """Issue 10 item 2: "CLI and CSV import both take the events"; 004: each new myelopathic deficit is
    imaged ("MRI cervical and thoracic spine") within days of its own date."""
    good = tmp_path / "events.csv"
    good.write_text("patient_id,dmt,dmt_start,flags,events\n"
                    f"{PID},Ocrevus,2020-01-01,spinal_symptoms,relapse-spinal=2026-06-12\n", encoding="utf-8")
    assert run(config, "patient", "import", str(good)).returncode == 0
    spine = due(config)["spine"]
    assert spine["rule_ids"][0] == "new-deficit-spine" and spine["target"] == "2026-06-12"
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,dmt,dmt_start,dmt_stop\nPAT-CLIN-2,fingolimod,2025-05-01,2025-01-01\n", encoding="utf-8")
    proc = run(config, "patient", "import", str(bad))
    assert proc.returncode == 2 and "line 2" in proc.stderr and "dmt_stop" in proc.stderr and "dmt_start" in proc.stderr
