import pytest

from carbonhook.errors import RulesError
from workers.rules import RulesHolder, load_rules, parse_rules

CORE_EXAMPLE = '''
[[rule]]
name = "offset-published-crps"    # unique and stable: part of the ledger key
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "sustainability@example.com"
customer_name = "Example Ltd"

[[rule]]
name = "five-percent"
on = "crp.generated"
offset = { fraction = 0.05, of = "total" }
'''


def test_the_core_issue_example_is_valid():
    ruleset = parse_rules(CORE_EXAMPLE)
    assert [r.name for r in ruleset.rules] == ["offset-published-crps", "five-percent"]
    assert ruleset.rules[0].capture_lbs == 500
    assert ruleset.rules[1].offset is not None and ruleset.rules[1].offset.of == "total"
    assert len(ruleset.sha256) == 64


def test_the_repository_example_file_is_valid():
    from pathlib import Path

    ruleset = load_rules(Path(__file__).resolve().parents[2] / "rules.example.toml")
    assert ruleset.rules


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[rule]]\nname = "a"\non = "crp.generated"\n', "rule 'a', field '(rule)': give exactly one of"),
        ('[[rule]]\nname = "a"\non = "Crp.Deleted"\ncapture_lbs = 1\n', "rule 'a', field 'on': 'Crp.Deleted' is not an event name"),
        ('[[rule]]\nname = "a"\non = "bill"\ncapture_lbs = 1\n', "rule 'a', field 'on'"),
        ('[[rule]]\nname = "a"\non = "bill.confirmed.v2"\ncapture_lbs = 1\n', "rule 'a', field 'on'"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\ncapture_lbs = -1\n', "rule 'a', field 'capture_lbs'"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\ncapture_lbs = 1\ncolour = "red"\n', "field 'colour'"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\noffset = { fraction = 0.1, of = "scope9" }\n', "field 'offset.of'"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\ncapture_lbs = 1\ncustomer_name = "X"\n', "customer_name needs customer_email"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\ncapture_lbs = 1\ncustomer_email = "nope"\n', "not an email"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\ncapture_lbs = 1\nwhen = { "crp.status" = { like = "x" } }\n', "unknown operator"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\ncapture_lbs = 1\n[[rule]]\nname = "a"\non = "crp.generated"\ncapture_lbs = 2\n', "used twice"),
        ('[[rule]]\nname = "a"\non = "crp.generated"\noffset_delta = { fraction = 0.1 }\n', "offset_delta is for events that name a site"),
        ("[[rule]\n", "not valid TOML"),
        ('[limits]\nmax_lbs_per_day = 0\n', "field 'limits.max_lbs_per_day'"),
    ],
)
def test_invalid_files_name_the_rule_and_the_field(text, says):
    with pytest.raises(RulesError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_rules(text, path="rules.toml")


def test_errors_give_the_line_of_the_field():
    text = '[[rule]]\nname = "ok"\non = "crp.generated"\ncapture_lbs = 1\n\n[[rule]]\nname = "bad"\non = "crp.generated"\ncapture_lbs = "lots"\n'
    with pytest.raises(RulesError, match=r"rules.toml \(line 9\): rule 'bad', field 'capture_lbs'"):
        parse_rules(text, path="rules.toml")


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.toml")


def test_reload_keeps_the_old_rules_when_the_new_file_is_invalid(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(CORE_EXAMPLE)
    holder = RulesHolder(path)
    before = holder()
    path.write_text("[[rule]]\nname = 1\n")
    with pytest.raises(RulesError):
        holder.reload()
    assert holder() is before
    path.write_text(CORE_EXAMPLE.replace("500", "600"))
    assert holder.reload().rules[0].capture_lbs == 600


def test_a_rule_may_be_on_any_event_name_and_the_unknown_ones_are_listed():
    ruleset = parse_rules(
        '[[rule]]\nname = "calc"\non = "bill.calculated"\noffset_delta = { fraction = 0.1 }\n'
        '[[rule]]\nname = "usual"\non = "bill.confirmed"\ncapture_lbs = 1\n'
        '[[rule]]\nname = "sites"\non = "site_2.added"\ncapture_lbs = 1\n'
    )
    assert [rule.on for rule in ruleset.rules] == ["bill.calculated", "bill.confirmed", "site_2.added"]
    assert ruleset.unknown_types() == ["bill.calculated", "site_2.added"]
    assert [rule.name for rule in ruleset.for_event("bill.calculated")] == ["calc"]
    assert parse_rules(CORE_EXAMPLE).unknown_types() == []


def test_a_catch_up_is_processed_by_every_offset_delta_rule_and_by_those_on_it():
    ruleset = parse_rules(
        '[[rule]]\nname = "calc"\non = "bill.calculated"\noffset_delta = { fraction = 0.1 }\n'
        '[[rule]]\nname = "flat"\non = "bill.confirmed"\ncapture_lbs = 1\n'
        '[[rule]]\nname = "whole"\non = "bill.confirmed"\noffset = { fraction = 0.1 }\n'
        '[[rule]]\nname = "own"\non = "emissions.catch_up"\noffset_delta = { fraction = 0.2 }\n'
    )
    assert [rule.name for rule in ruleset.for_event("emissions.catch_up")] == ["calc", "own"]
    assert [rule.name for rule in ruleset.for_event("bill.confirmed")] == ["flat", "whole"]
    assert ruleset.unknown_types() == ["bill.calculated"]  # emissions.catch_up is carbonhook's own
    with pytest.raises(RulesError, match=r"a rule on emissions\.catch_up takes offset_delta"):
        parse_rules('[[rule]]\nname = "flat"\non = "emissions.catch_up"\ncapture_lbs = 5\n')


# -- rules that wait ---------------------------------------------------------------------------

WAITING_RULE = '[[rule]]\nname = "w"\non = "crp.generated"\ncapture_lbs = 1\n'


def test_a_rule_waits_for_a_condition_in_whens_syntax_for_a_duration():
    rule = parse_rules(WAITING_RULE + 'wait_until = { "crp.status" = "published", "crp.sections.actions" = { exists = true } }\nwait_for = "14d"\n').rules[0]
    assert rule.wait_until == {"crp.status": "published", "crp.sections.actions": {"exists": True}}
    assert rule.wait_for_s == 14 * 86400
    assert rule.sources() == {"crp"}


def test_a_rule_without_wait_waits_for_nothing():
    assert parse_rules(WAITING_RULE).rules[0].wait_for_s == 0.0


@pytest.mark.parametrize(("wait_for", "seconds"), [("45s", 45), ("30m", 1800), ("12h", 43200), ("90d", 90 * 86400)])
def test_wait_for_reads_seconds_minutes_hours_and_days(wait_for, seconds):
    text = WAITING_RULE + f'wait_until = {{ "crp.status" = "published" }}\nwait_for = "{wait_for}"\n'
    assert parse_rules(text).rules[0].wait_for_s == seconds


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ('wait_until = { "crp.status" = "published" }\n', "wait_until and wait_for go together"),
        ('wait_for = "1d"\n', "wait_until and wait_for go together"),
        ('wait_until = {}\nwait_for = "1d"\n', "wait_until needs at least one condition"),
        ('wait_until = { "crp.status" = { like = "p" } }\nwait_for = "1d"\n', "field 'wait_until': 'crp.status': unknown operator"),
        ('wait_until = { "bill.status" = "x" }\nwait_for = "1d"\n', "field 'wait_until': 'bill.status': a dotted path starts with one of"),
        ('wait_until = { "crp.status" = { in = "published" } }\nwait_for = "1d"\n', "'in' takes a list"),
        ('wait_until = { "crp.status" = "published" }\nwait_for = "2 weeks"\n', "field 'wait_for': '2 weeks' is not a duration"),
        ('wait_until = { "crp.status" = "published" }\nwait_for = "0d"\n', "is not a duration"),
        ('wait_until = { "crp.status" = "published" }\nwait_for = "91d"\n', "longer than the longest wait, 90d"),
        ('wait_until = { "crp.status" = "published" }\nwait_for = 14\n', "field 'wait_for'"),
    ],
)
def test_a_wait_that_is_not_right_is_a_clear_error(lines, says):
    with pytest.raises(RulesError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_rules(WAITING_RULE + lines, path="rules.toml")
