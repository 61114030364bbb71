import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbonhook.errors import PlanError
from workers.planning import (
    _MISSING,
    MAX_PER_CALL,
    Resources,
    check,
    explain,
    lbs_from_tonnes,
    needed_sources,
    split,
)
from workers.rules import parse_rules

COMPANY = {"name": "Acme Industries Ltd", "employeeCount": 42, "currentEmissions": {"reportingPeriod": "2025-26", "totalTco2e": 526.5, "scope1": 124.8, "scope2": 312.5, "scope3": 89.2}}
SITE = {"reportingPeriod": "2025-26", "totalTco2e": 172.0, "scope1": {"total": 42.1, "breakdown": None}, "scope2": {"total": 108.3, "breakdown": None}, "scope3": {"total": 21.6, "breakdown": None}}
CRP = {"id": "crp_5tN8xBmQ", "status": "published", "fyYear": "2026"}


def plan(text, event_type="crp.generated", **resources):
    outcomes = explain(parse_rules(text), event_type, Resources(**{"event": {}, **resources}))
    return [c for o in outcomes for c in o.captures], outcomes


def rule(body, on="crp.generated"):
    return f'[[rule]]\nname = "r"\non = "{on}"\n{body}\n'


def test_a_fixed_amount_with_a_customer():
    captures, _ = plan(rule('capture_lbs = 500\ncustomer_email = "a@b.co"\ncustomer_name = "A"'), crp=CRP)
    assert [(c.amount, c.part, c.customer_email, c.customer_name) for c in captures] == [(500, 0, "a@b.co", "A")]


def test_bare_when_fields_mean_the_crp():
    assert plan(rule('when = { status = "published" }\ncapture_lbs = 1'), crp=CRP)[0]
    captures, outcomes = plan(rule('when = { status = "draft" }\ncapture_lbs = 1'), crp=CRP)
    assert not captures and "status is 'published', wanted 'draft'" in outcomes[0].reasons[0]


def test_bare_when_fields_of_a_bill_mean_the_event_data():
    text = rule('when = { siteId = "site_3rZ1" }\ncapture_lbs = 1', on="bill.confirmed")
    assert plan(text, "bill.confirmed", event={"siteId": "site_3rZ1"})[0]
    assert not plan(text, "bill.confirmed", event={"siteId": "site_other"})[0]


def test_offset_of_a_crp_uses_the_company_current_emissions():
    captures, _ = plan(rule('offset = { fraction = 0.05, of = "total" }'), crp=CRP, company=COMPANY)
    assert captures[0].amount == round(526.5 * 0.05 * 2204.62262)  # 58036.69 -> 58037
    captures, _ = plan(rule('offset = { fraction = 0.1, of = "scope2" }'), crp=CRP, company=COMPANY)
    assert captures[0].amount == 68894  # 312.5 * 0.1 * 2204.62262 = 68894.46


def test_offset_of_a_bill_uses_its_site_emissions_or_else_the_company():
    text = rule('offset = { fraction = 0.01, of = "scope1" }', on="bill.confirmed")
    site, _ = plan(text, "bill.confirmed", event={"siteId": "site_3rZ1"}, emissions=SITE, company=COMPANY)
    assert site[0].amount == 928  # 42.1 * 0.01 * 2204.62262 = 928.15
    company, _ = plan(text, "bill.confirmed", event={}, company=COMPANY)
    assert company[0].amount == 2751  # 124.8 * 0.01 * 2204.62262 = 2751.37


def test_under_one_pound_is_skipped():
    captures, _ = plan(rule('offset = { fraction = 0.0000001 }'), crp=CRP, company=COMPANY)
    assert captures[0].skipped and captures[0].amount == 0


def test_over_ten_million_is_split_into_parts():
    captures, _ = plan(rule("capture_lbs = 25000001"), crp=CRP)
    assert [(c.part, c.amount) for c in captures] == [(0, 10_000_000), (1, 10_000_000), (2, 5_000_001)]


def test_max_lbs_caps_one_capture():
    captures, _ = plan(rule("capture_lbs = 900\nmax_lbs = 250"), crp=CRP)
    assert [c.amount for c in captures] == [250]


def test_operators():
    assert check(5, {"gte": 5, "lt": 6})
    assert not check(5, {"gt": 5})
    assert check("a", {"in": ["a", "b"]}) and not check("c", {"in": ["a"]})
    assert check("c", {"not_in": ["a"]}) and check(_MISSING, {"not_in": ["a"]})
    assert check(_MISSING, {"exists": False}) and not check(_MISSING, {"exists": True})
    assert check(None, {"exists": False}) and check(0, {"exists": True})
    assert check("x", {"ne": "y"}) and check(_MISSING, {"ne": "y"})
    assert not check("10", {"gt": 5})  # no comparison across types
    assert not check(_MISSING, "published") and not check(_MISSING, {"eq": None})


def test_dotted_paths_across_sources():
    text = rule('when = { "crp.status" = "published", "company.employeeCount" = { gte = 10 }, "company.currentEmissions.totalTco2e" = { gt = 500 } }\ncapture_lbs = 1')
    assert plan(text, crp=CRP, company=COMPANY)[0]
    assert not plan(text, crp=CRP, company={**COMPANY, "employeeCount": 3})[0]


def test_placeholders_fill_the_customer_from_fetched_resources():
    captures, _ = plan(rule('capture_lbs = 5\ncustomer_email = "esg+{crp.id}@example.com"\ncustomer_name = "{company.name}"'), crp=CRP, company=COMPANY)
    assert (captures[0].customer_email, captures[0].customer_name) == ("esg+crp_5tN8xBmQ@example.com", "Acme Industries Ltd")


def test_a_placeholder_without_a_value_is_a_plan_error():
    with pytest.raises(PlanError, match=r"company\.nickname"):
        plan(rule('capture_lbs = 5\ncustomer_email = "a@b.co"\ncustomer_name = "{company.nickname}"'), crp=CRP, company=COMPANY)


def test_dry_run_at_the_top_or_on_one_rule():
    assert plan("dry_run = true\n" + rule("capture_lbs = 5"), crp=CRP)[0][0].dry_run
    assert plan(rule("capture_lbs = 5\ndry_run = true"), crp=CRP)[0][0].dry_run
    assert not plan(rule("capture_lbs = 5"), crp=CRP)[0][0].dry_run


def test_only_what_the_rules_need_is_fetched():
    assert needed_sources(parse_rules(rule("capture_lbs = 1")), "crp.generated") == {"crp"}
    assert needed_sources(parse_rules(rule("offset = { fraction = 0.1 }")), "crp.generated") == {"crp", "company"}
    bill = parse_rules(rule("capture_lbs = 1", on="bill.confirmed"))
    assert needed_sources(bill, "bill.confirmed") == set()
    assert needed_sources(parse_rules(rule("offset = { fraction = 0.1 }", on="bill.confirmed")), "bill.confirmed") == {"emissions"}


def test_an_absurd_amount_is_refused_not_split_a_million_times():
    with pytest.raises(PlanError, match="set max_lbs"):
        plan(rule("offset = { fraction = 1000 }"), crp=CRP, company={"currentEmissions": {"totalTco2e": 1e9}})


@given(st.floats(min_value=0, max_value=1e5, allow_nan=False), st.floats(min_value=0.000001, max_value=1, allow_nan=False))
def test_amounts_are_never_negative_and_parts_add_up(tonnes, fraction):
    total = lbs_from_tonnes(tonnes, fraction)
    assert total >= 0
    parts = split(total)
    assert sum(parts) == total
    assert all(0 <= p <= MAX_PER_CALL for p in parts)
    assert abs(total - tonnes * fraction * 2204.62262) <= 0.5 + 1e-6 * total
