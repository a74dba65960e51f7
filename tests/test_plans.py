"""Monitoring plans: the guideline scenarios of GUIDELINES.md section 3 against the shipped
protocols/intervals.toml, then the plan tables on a real SQLite file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from msfollowup.db import Database
from msfollowup.app.plans import (
    DueExam,
    ExamRecord,
    IntervalRules,
    IntervalRulesError,
    PlanData,
    PlanError,
    compute_due,
    due_for_all,
    exam_history,
    get_plan,
    load_interval_rules,
    plan_history,
    profile_for_patient,
    refresh_patient,
    set_plan,
)
from msfollowup.app.plans_csv import PlanImportError, import_plans_csv
from nodeutil import add_study_check

D = dt.date
PID = "PAT-0001"


@pytest.fixture(scope="module")
def rules() -> IntervalRules:
    return load_interval_rules()


def exam(
    date: dt.date,
    verdict: str = "compliant",
    profile: str = "ms-brain-routine",
    failed: tuple[str, ...] = (),
    purpose: str = "brain",
    uid: str | None = None,
) -> ExamRecord:
    return ExamRecord(uid or f"1.2.826.0.1.{date:%Y%m%d}", date, profile, verdict, failed, purpose)


def only(due: list[DueExam], purpose: str = "brain") -> DueExam:
    found = [d for d in due if d.purpose == purpose]
    assert len(found) == 1, due
    return found[0]


def window(d: DueExam) -> tuple[dt.date, dt.date, dt.date]:
    return d.earliest, d.target, d.latest


# --- guideline scenarios (pure computation) ------------------------------------------------------


def test_stable_on_dmt_is_due_12_months_after_the_last_compliant_exam(rules: IntervalRules) -> None:
    plan = PlanData(PID, diagnosed=D(2015, 3, 1), dmt="Ocrelizumab", dmt_start=D(2020, 1, 1), jcv="negative")
    exams = [exam(D(2025, 3, 10)), exam(D(2026, 3, 10))]
    due = compute_due(plan, exams, D(2026, 6, 15), rules)
    brain = only(due)
    assert len(due) == 1
    assert window(brain) == (D(2027, 2, 10), D(2027, 3, 10), D(2027, 4, 10))
    assert brain.profile_id == "ms-brain-routine"
    assert brain.rule_ids == ("routine-annual",)
    assert brain.based_on_study == exams[-1].study_uid
    assert brain.patient_id == PID and not brain.recall


def test_newly_diagnosed_baseline_then_3_to_6_months_then_6_to_12_months(rules: IntervalRules) -> None:
    plan = PlanData(PID, diagnosed=D(2026, 1, 10))
    # No exam at all: the baseline is due now.
    first = only(compute_due(plan, [], D(2026, 1, 12), rules))
    assert first.earliest == first.target == D(2026, 1, 12)
    assert first.rule_ids[0] == "baseline"
    # After the baseline: second scan 3-6 months later.
    second = only(compute_due(plan, [exam(D(2026, 1, 20))], D(2026, 2, 1), rules))
    assert (second.earliest, second.latest) == (D(2026, 4, 20), D(2026, 7, 20))
    assert second.rule_ids == ("newly-diagnosed-first",)
    # Then every 6-12 months for the first years, not yet annual.
    third = only(compute_due(plan, [exam(D(2026, 1, 20)), exam(D(2026, 5, 25))], D(2026, 6, 1), rules))
    assert window(third) == (D(2026, 11, 25), D(2027, 2, 25), D(2027, 5, 25))
    assert third.rule_ids == ("newly-diagnosed",)
    # Three years after diagnosis: back to the annual routine.
    later = only(compute_due(plan, [exam(D(2029, 2, 1))], D(2029, 3, 1), rules))
    assert later.rule_ids == ("routine-annual",)


def test_treatment_start_reference_scan_at_6_months_and_follow_up_at_12(rules: IntervalRules) -> None:
    plan = PlanData(PID, diagnosed=D(2019, 6, 1), dmt="ocrelizumab", dmt_start=D(2026, 1, 15))
    pre = exam(D(2025, 12, 1))  # pre-treatment scan: the reference waits until the drug is effective
    ref = only(compute_due(plan, [pre], D(2026, 2, 1), rules))
    assert window(ref) == (D(2026, 6, 15), D(2026, 7, 15), D(2026, 8, 15))
    assert ref.rule_ids == ("treatment-start",)
    reference = exam(D(2026, 7, 20))
    follow = only(compute_due(plan, [pre, reference], D(2026, 8, 1), rules))
    assert follow.target == D(2027, 1, 15)  # 12 months after the start (002), not after the reference scan
    assert "treatment-start" in follow.rule_ids
    # The promised 12-month follow-up is not lost when the patient crosses 12 months without it.
    missed = only(compute_due(plan, [pre, reference], D(2027, 3, 1), rules))
    assert missed.target == D(2027, 1, 15) and missed.latest < D(2027, 3, 1)
    # After the 12-month follow-up: yearly.
    after = only(compute_due(plan, [pre, reference, exam(D(2027, 1, 18))], D(2027, 2, 1), rules))
    assert after.target == D(2028, 1, 18)
    assert after.rule_ids == ("routine-annual",)


def test_natalizumab_jcv_positive_under_18_months_is_due_when_high_risk_begins(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="natalizumab", dmt_start=D(2025, 1, 1), jcv="positive")
    last = exam(D(2026, 1, 10), profile="ms-brain-pml-screening")
    due = only(compute_due(plan, [last], D(2026, 3, 1), rules))  # 14 months on natalizumab
    assert due.profile_id == "ms-brain-pml-screening"
    # Not 3-4 months after the last scan (it is not high risk yet), and not a full year either:
    # the next scan falls on the day treatment reaches 18 months.
    assert due.earliest == due.target == D(2026, 7, 3)
    assert due.rule_ids == ("natalizumab-high-risk",)


def test_natalizumab_jcv_positive_18_months_or_more_every_3_to_4_months(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="natalizumab", dmt_start=D(2024, 1, 1), jcv="positive")
    due = only(compute_due(plan, [exam(D(2026, 5, 1), profile="ms-brain-pml-screening")], D(2026, 6, 15), rules))
    assert window(due) == (D(2026, 8, 1), D(2026, 8, 16), D(2026, 9, 1))
    assert due.profile_id == "ms-brain-pml-screening"
    assert due.rule_ids[0] == "natalizumab-high-risk"


def test_natalizumab_jcv_negative_yearly_with_pml_screening_protocol(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="natalizumab", dmt_start=D(2022, 1, 1), jcv="negative")
    due = only(compute_due(plan, [exam(D(2026, 5, 1), profile="ms-brain-pml-screening")], D(2026, 6, 15), rules))
    assert window(due) == (D(2027, 4, 1), D(2027, 5, 1), D(2027, 6, 1))
    # The yearly PML scan is also the yearly efficacy scan: union of both protocols (issue 10 item 4).
    assert due.profile_id == "ms-brain-pml-screening+ms-brain-routine"
    assert "natalizumab-low-risk" in due.rule_ids
    assert "natalizumab-high-risk" not in due.rule_ids


def test_switch_from_natalizumab_3_to_4_months_for_a_year_then_annual(rules: IntervalRules) -> None:
    plan = PlanData(
        PID,
        dmt="fingolimod",
        dmt_start=D(2026, 2, 1),
        previous_dmt="natalizumab",
        switch_date=D(2026, 2, 1),
        jcv="positive",
    )
    at_switch = exam(D(2026, 2, 1), profile="ms-brain-pml-screening")
    early = only(compute_due(plan, [at_switch], D(2026, 3, 1), rules))
    assert window(early) == (D(2026, 5, 1), D(2026, 5, 16), D(2026, 6, 1))
    assert early.profile_id == "ms-brain-pml-screening"
    assert early.rule_ids[0] == "switch-from-natalizumab"
    year_later = [at_switch, exam(D(2026, 5, 10)), exam(D(2026, 8, 20)), exam(D(2027, 2, 10))]
    late = only(compute_due(plan, year_later, D(2027, 3, 1), rules))
    assert late.target == D(2028, 2, 10)
    assert late.profile_id == "ms-brain-routine"
    assert late.rule_ids == ("routine-annual",)


def test_pml_suspected_is_due_immediately_then_followed_with_the_pml_protocol(rules: IntervalRules) -> None:
    today = D(2026, 6, 15)
    plan = PlanData(PID, dmt="natalizumab", dmt_start=D(2025, 12, 1), jcv="negative", flags={"pml_suspected": today})
    now = only(compute_due(plan, [exam(D(2026, 5, 1))], today, rules))
    assert now.earliest == now.target == today
    assert now.latest <= today + dt.timedelta(days=7)
    assert now.profile_id == "ms-brain-pml-suspected"
    assert now.rule_ids[0] == "pml-suspected-now"
    # The immediate scan answers the event; follow-up stays on the PML-suspected protocol.
    done = exam(D(2026, 6, 16), profile="ms-brain-pml-suspected")
    after = only(compute_due(plan, [exam(D(2026, 5, 1)), done], D(2026, 6, 20), rules))
    assert after.target == D(2026, 10, 1)
    assert after.profile_id == "ms-brain-pml-suspected"
    assert "pml-suspected-now" not in after.rule_ids and "pml-suspected-followup" in after.rule_ids


def test_gadolinium_contraindicated_maps_to_the_no_contrast_profile(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="ocrelizumab", dmt_start=D(2020, 1, 1), flags={"gadolinium_contraindicated": None})
    due = only(compute_due(plan, [exam(D(2026, 3, 1), profile="ms-brain-no-contrast")], D(2026, 6, 15), rules))
    assert due.profile_id == "ms-brain-no-contrast"
    assert "gadolinium-contraindicated" in due.rule_ids
    # PML suspected without contrast: the diffusion-weighted PML screening protocol.
    flags: dict[str, dt.date | None] = {"gadolinium_contraindicated": None, "pml_suspected": D(2026, 6, 15)}
    pml = only(compute_due(PlanData(PID, flags=flags), [exam(D(2026, 3, 1))], D(2026, 6, 15), rules))
    assert pml.profile_id == "ms-brain-pml-screening"


def test_non_compliant_study_produces_a_recall_instead_of_resetting_the_clock(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="ocrelizumab", dmt_start=D(2020, 1, 1))
    good = exam(D(2025, 7, 1))
    bad = exam(D(2026, 6, 10), verdict="non-compliant", failed=("sequence.t1_post",), uid="1.2.3.99")
    due = only(compute_due(plan, [good, bad], D(2026, 6, 12), rules))
    assert due.recall
    assert due.recall_items == ("sequence.t1_post",)
    assert due.based_on_study == "1.2.3.99"
    assert due.profile_id == "ms-brain-routine@t1_post"  # issue 10 item 5: recall only what was missing
    assert (due.target, due.latest) == (D(2026, 6, 17), D(2026, 6, 24))
    assert due.rule_ids[0] == "recall"
    # Had the failed study reset the clock, the next exam would be a year after it.
    assert due.latest < D(2027, 5, 10)
    # The repeat is compliant: back to the regular interval from the repeat.
    fixed = only(compute_due(plan, [good, bad, exam(D(2026, 6, 20))], D(2026, 6, 21), rules))
    assert not fixed.recall and fixed.target == D(2027, 6, 20)


def test_unverifiable_study_is_a_recall_only_when_a_sequence_is_missing(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="ocrelizumab", dmt_start=D(2020, 1, 1))
    timing = exam(D(2026, 6, 1), verdict="unverifiable", failed=("contrast_delay",))
    ok = only(compute_due(plan, [timing], D(2026, 6, 5), rules))
    # Issue 10 item 5: unverifiable does not reset the clock (nor is it a recall): it waits for review.
    assert not ok.recall and ok.target == D(2026, 6, 5) and ok.review == (timing.study_uid,)
    accepted = only(compute_due(plan, [dataclasses.replace(timing, accepted=True)], D(2026, 6, 5), rules))
    assert accepted.target == D(2027, 6, 1) and not accepted.review
    missing = exam(D(2026, 6, 1), verdict="unverifiable", failed=("sequence.t2_flair",))
    recall = only(compute_due(plan, [exam(D(2025, 9, 1)), missing], D(2026, 6, 5), rules))
    assert recall.recall and recall.recall_items == ("sequence.t2_flair",)


def test_several_rules_shortest_interval_and_richest_protocol_win_and_are_named(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="natalizumab", dmt_start=D(2022, 1, 1), jcv="negative", flags={"highly_active": None})
    due = only(compute_due(plan, [exam(D(2026, 5, 1))], D(2026, 6, 15), rules))
    assert window(due) == (D(2026, 8, 1), D(2026, 9, 16), D(2026, 11, 1))  # highly active: 3-6 months
    # Issue 10 item 4: the union of what both rules need (PML screening + contrast T1 of efficacy monitoring).
    assert due.profile_id == "ms-brain-pml-screening+ms-brain-routine"
    assert due.rule_ids == ("highly-active", "natalizumab-low-risk")
    assert "highly-active" in due.reason and "natalizumab-low-risk" in due.reason


def test_override_from_the_plan_wins_over_rules(rules: IntervalRules) -> None:
    base = PlanData(PID, dmt="natalizumab", dmt_start=D(2022, 1, 1), jcv="positive")
    plan = PlanData(**{**base.__dict__, "override_interval_months": 6.0, "override_protocol": "ms-brain-pml-suspected"})
    due = only(compute_due(plan, [exam(D(2026, 5, 1))], D(2026, 6, 15), rules))
    # Issue 10 item 6: the override never relaxes PML surveillance: the 3-4 months of the high-risk rule stay.
    assert due.target == D(2026, 8, 16)
    assert due.earliest < due.target < due.latest
    assert due.profile_id == "ms-brain-pml-suspected"
    assert due.rule_ids[0] == "natalizumab-high-risk" and "override-protocol" in due.rule_ids
    assert due.override is not None
    # An immediate event is not silenced by an override.
    flagged = PlanData(**{**plan.__dict__, "flags": {"pml_suspected": D(2026, 6, 15)}})
    event = only(compute_due(flagged, [exam(D(2026, 5, 1))], D(2026, 6, 15), rules))
    assert event.target == D(2026, 6, 15) and "pml-suspected-now" in event.rule_ids


def test_patient_without_a_plan_gets_the_site_default(rules: IntervalRules) -> None:
    due = compute_due(None, [exam(D(2026, 1, 5))], D(2026, 6, 15), rules, patient_id=PID)
    assert [d.purpose for d in due] == ["brain"]
    assert due[0].patient_id == PID
    assert due[0].rule_ids == tuple(rules.site_default) == ("routine-annual",)
    assert (due[0].target, due[0].profile_id) == (D(2027, 1, 5), "ms-brain-routine")
    baseline = only(compute_due(None, [], D(2026, 6, 15), rules, patient_id=PID))
    assert baseline.earliest == baseline.target == D(2026, 6, 15)


def test_spinal_symptoms_add_a_separate_yearly_spine_item(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="ocrelizumab", dmt_start=D(2020, 1, 1), flags={"spinal_symptoms": None})
    spine_exam = exam(D(2025, 9, 1), profile="ms-spine-new-deficit", purpose="spine")
    due = compute_due(plan, [exam(D(2026, 1, 1)), spine_exam], D(2026, 6, 15), rules)
    assert [d.purpose for d in due] == ["brain", "spine"]
    assert only(due, "brain").target == D(2027, 1, 1)
    spine = only(due, "spine")
    assert (spine.target, spine.profile_id, spine.rule_ids) == (D(2026, 9, 1), "ms-spine-new-deficit", ("spine-annual",))
    # A new myelopathic deficit: cervical and thoracic spine now.
    flags: dict[str, dt.date | None] = {"spinal_symptoms": None, "new_deficit": D(2026, 6, 14)}
    acute = only(compute_due(PlanData(PID, flags=flags), [spine_exam], D(2026, 6, 15), rules), "spine")
    assert acute.target == D(2026, 6, 14) and acute.rule_ids[0] == "new-deficit-spine"


def test_long_term_stable_relaxes_the_interval(rules: IntervalRules) -> None:
    plan = PlanData(PID, dmt="interferon beta", dmt_start=D(2010, 1, 1), flags={"long_term_stable": None})
    due = only(compute_due(plan, [exam(D(2026, 1, 1))], D(2026, 6, 15), rules))
    assert due.target == D(2028, 1, 1) and due.rule_ids == ("long-term-stable",)


# --- the rules file --------------------------------------------------------------------------------


def _packaged_text() -> str:
    import importlib.resources

    return (importlib.resources.files("msfollowup.protocols") / "intervals.toml").read_text(encoding="utf-8")


def test_interval_rules_file_errors_name_the_rule_and_key(tmp_path: Path) -> None:
    bad = _packaged_text().replace("when.months_on_dmt = { ge = 18 }", "when.months_on_drug = { ge = 18 }")
    (tmp_path / "intervals.toml").write_text(bad, encoding="utf-8")
    with pytest.raises(IntervalRulesError, match=r"rule 'natalizumab-high-risk'.*months_on_drug.*unknown variable"):
        load_interval_rules(tmp_path)
    bad = _packaged_text().replace('when.jcv = { in = ["positive", "unknown"] }', 'when.jcv = { matches = "pos.*" }')
    (tmp_path / "intervals.toml").write_text(bad, encoding="utf-8")
    with pytest.raises(IntervalRulesError, match=r"jcv\.matches: operator not allowed"):
        load_interval_rules(tmp_path)


def test_site_protocols_dir_replaces_the_packaged_intervals(tmp_path: Path) -> None:
    assert load_interval_rules(tmp_path).version  # no site file: the packaged rules
    site = _packaged_text().replace(
        'window = { earliest = 11, target = 12, latest = 13 }\nsource = "002 Box 2; 001; 000"',
        'window = { earliest = 5, target = 6, latest = 7 }\nsource = "002 Box 2; 001; 000"',
    )
    (tmp_path / "intervals.toml").write_text(site, encoding="utf-8")
    rules = load_interval_rules(tmp_path)
    due = only(compute_due(None, [exam(D(2026, 1, 5))], D(2026, 2, 1), rules, patient_id=PID))
    assert due.target == D(2026, 7, 5)


# --- database ----------------------------------------------------------------------------------


@pytest.fixture()
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def test_set_show_and_history_on_a_real_sqlite_file(db: Database, rules: IntervalRules) -> None:
    with db.session() as s:
        set_plan(s, PID, {"dmt": "Natalizumab", "dmt_start": "2024-01-01", "jcv": "positive"}, "dr.a", rules=rules)
    with db.session() as s:
        set_plan(s, PID, {"jcv": "negative", "set_flags": ["spinal_symptoms=2026-02-01"]}, "dr.b", rules=rules)
        set_plan(s, PID, {"jcv": "negative"}, "dr.c", rules=rules)  # no change: no history row
    with db.session() as s:
        plan = get_plan(s, PID)
        history = plan_history(s, PID)
    assert plan is not None
    assert (plan.dmt, plan.dmt_start, plan.jcv) == ("natalizumab", D(2024, 1, 1), "negative")
    assert plan.flags == {"spinal_symptoms": D(2026, 2, 1)}
    assert [h.author for h in history] == ["dr.a", "dr.b"]
    assert history[0].changes["dmt"] == {"old": None, "new": "natalizumab"}
    assert history[1].changes["jcv"] == {"old": "positive", "new": "negative"}
    assert history[1].changes["flags"] == {"old": {}, "new": {"spinal_symptoms": "2026-02-01"}}
    with pytest.raises(PlanError) as err, db.session() as s:
        set_plan(s, PID, {"dmt_start": "01.02.2024"}, "dr.d", rules=rules)
    assert "dmt_start" in str(err.value) and PID not in str(err.value)
    for bad in ({"jcv": "maybe"}, {"set_flags": ["pregnant"]}, {"override_interval": "-3"}, {"colour": "x"}):
        with pytest.raises(PlanError), db.session() as s:
            set_plan(s, PID, bad, "dr.d", rules=rules)
    with db.session() as s:
        assert len(plan_history(s, PID)) == 2


def test_exam_history_uses_the_latest_check_version_and_feeds_the_due_list(db: Database, rules: IntervalRules) -> None:
    add_study_check(db, "PAT-CHECKED", "1.2.3.1", 1, "20260110", "non-compliant", ["sequence.t1_post"])
    add_study_check(db, "PAT-CHECKED", "1.2.3.1", 2, "20260110", "compliant", [])
    add_study_check(db, "PAT-CHECKED", "1.2.3.2", 1, "20260601", "non-compliant", ["sequence.t2_flair"])
    with db.session() as s:
        set_plan(s, PID, {"dmt": "natalizumab", "dmt_start": "2023-01-01", "jcv": "positive"}, "dr.a", rules=rules)
        history = exam_history(s, "PAT-CHECKED", rules)
        assert [(e.study_uid, e.verdict, e.failed) for e in history] == [
            ("1.2.3.1", "compliant", ()),
            ("1.2.3.2", "non-compliant", ("sequence.t2_flair",)),
        ]
        everyone = due_for_all(s, D(2026, 6, 5), rules)
        assert {d.patient_id for d in everyone} == {PID, "PAT-CHECKED"}
        checked = [d for d in everyone if d.patient_id == "PAT-CHECKED"][0]
        assert checked.recall and checked.recall_items == ("sequence.t2_flair",)
        # Baseline of a natalizumab patient: PML screening and efficacy monitoring together (issue 10 item 4).
        assert profile_for_patient(s, PID, D(2026, 6, 5), rules) == "ms-brain-pml-screening+ms-brain-routine"
        assert profile_for_patient(s, "PAT-NOBODY", D(2026, 6, 5), rules) == "ms-brain-routine"
        assert refresh_patient(s, PID, D(2026, 6, 5), rules)[0].patient_id == PID


def test_csv_import_with_a_bad_row_on_line_4_applies_nothing(db: Database, rules: IntervalRules) -> None:
    with db.session() as s:
        set_plan(s, "PAT-B", {"dmt": "ocrelizumab"}, "dr.a", rules=rules)
    csv_text = (
        "patient_id,dmt,dmt_start,jcv,flags,diagnosed\n"
        "PAT-A,natalizumab,2024-01-01,positive,highly_active;spinal_symptoms,2020-05-01\n"
        "PAT-B,fingolimod,2025-02-01,negative,,\n"
        "PAT-C,natalizumab,2024-13-40,positive,,\n"
        "PAT-D,ocrelizumab,2024-01-01,negative,,\n"
    )
    with pytest.raises(PlanImportError) as err, db.session() as s:
        import_plans_csv(s, io.StringIO(csv_text), "importer", rules)
    assert err.value.line == 4
    assert str(err.value).startswith("line 4: dmt_start")
    assert "PAT-C" not in str(err.value)
    with db.session() as s:
        assert get_plan(s, "PAT-A") is None
        plan_b = get_plan(s, "PAT-B")
        assert plan_b is not None and plan_b.dmt == "ocrelizumab"
        assert len(plan_history(s, "PAT-B")) == 1
    good = csv_text.replace("2024-13-40", "2024-03-01")
    with db.session() as s:
        assert len(import_plans_csv(s, io.StringIO(good), "importer", rules)) == 4
    with db.session() as s:
        plan_a = get_plan(s, "PAT-A")
        assert plan_a is not None and set(plan_a.flags) == {"highly_active", "spinal_symptoms"}
        assert plan_history(s, "PAT-B")[-1].author == "importer"


def test_demographics_are_kept_with_history_and_validated_without_echoing_them(db: Database,
                                                                               rules: IntervalRules) -> None:
    """Issue 11: name, birth date and sex in the plan, every change in the history; a bad value is
    refused naming the field and the rule, never quoting the value."""
    with db.session() as s:
        set_plan(s, PID, {"patient_name": " Müller^Zoë ", "birth_date": "1985-03-04", "sex": "f"}, "dr.a",
                 rules=rules, today=D(2026, 6, 1))
    with db.session() as s:
        set_plan(s, PID, {"patient_name": "MÜLLER-SCHMIDT^Zoë", "birth_date": "19850305"}, "dr.b", rules=rules,
                 today=D(2026, 6, 1))
    with db.session() as s:
        plan = get_plan(s, PID)
        history = plan_history(s, PID)
    assert plan is not None
    assert (plan.patient_name, plan.birth_date, plan.sex) == ("MÜLLER-SCHMIDT^Zoë", D(1985, 3, 5), "F")
    assert history[0].changes["patient_name"] == {"old": None, "new": "Müller^Zoë"}
    assert history[1].changes["birth_date"] == {"old": "1985-03-04", "new": "1985-03-05"}
    assert "sex" not in history[1].changes
    secret = "SECRETNAME"
    bad_values = [
        ({"patient_name": f"{secret}\\OTHER"}, "backslash"),
        ({"patient_name": secret * 7}, "64 characters"),
        ({"patient_name": f"{secret}^A^B^C^D^E"}, "5 components"),
        ({"patient_name": f"{secret}\x1b^A"}, "control"),
        ({"patient_name": "^^"}, "required"),
        ({"birth_date": "31.12.1980"}, "YYYY-MM-DD"),
        ({"birth_date": "2026-06-02"}, "after today"),
        ({"birth_date": "1850-01-01"}, "before 1900"),
        ({"sex": "X"}, "M, F, O"),
    ]
    for change, why in bad_values:
        with pytest.raises(PlanError) as err, db.session() as s:
            set_plan(s, PID, change, "dr.c", rules=rules, today=D(2026, 6, 1))
        message = str(err.value)
        assert message.startswith(next(iter(change))) and why in message, message
        assert secret not in message and "31.12" not in message and PID not in message
    with db.session() as s:
        set_plan(s, PID, {"patient_name": "", "sex": ""}, "dr.d", rules=rules, today=D(2026, 6, 1))  # "" clears
        cleared = get_plan(s, PID)
        assert cleared is not None and (cleared.patient_name, cleared.sex) == (None, None)
        assert len(plan_history(s, PID)) == 3


def test_csv_import_takes_name_birth_date_and_sex(db: Database, rules: IntervalRules) -> None:
    csv_text = ("patient_id,patient_name,birth_date,sex,dmt\n"
                "PAT-N1,DOE^JANE,1990-01-02,F,ocrelizumab\n"
                "PAT-N2,,,,fingolimod\n")
    with db.session() as s:
        assert import_plans_csv(s, io.StringIO(csv_text), "importer", rules) == ["PAT-N1", "PAT-N2"]
        one, two = get_plan(s, "PAT-N1"), get_plan(s, "PAT-N2")
    assert one is not None and (one.patient_name, one.birth_date, one.sex) == ("DOE^JANE", D(1990, 1, 2), "F")
    assert two is not None and (two.patient_name, two.birth_date, two.sex) == (None, None, None)
    with pytest.raises(PlanImportError) as err, db.session() as s:
        import_plans_csv(s, io.StringIO(csv_text.replace(",F,", ",weiblich,")), "importer", rules)
    assert str(err.value).startswith("line 2: sex") and "weiblich" not in str(err.value)
