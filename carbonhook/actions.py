"""1ClickImpact's actions: the endpoint each calls, the field that carries its amount in answers
and records, and the unit that amount counts (docs/providers.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    CAPTURE_CARBON = "capture_carbon"
    PLANT_TREE = "plant_tree"
    CLEAN_OCEAN = "clean_ocean"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    path: str
    amount_key: str  # the amount's field in the create answer and in the records
    unit: str  # what one unit of `amount` is, for people
    window: str  # the prefix of its spend windows (`day:…` is carbon's, as stored since 0001)
    limits: tuple[str, str]  # the rules file's [limits] keys: per UTC day, per UTC month


ACTIONS: dict[Action, ActionSpec] = {
    Action.CAPTURE_CARBON: ActionSpec(
        "/v1/capture_carbon",
        "carbon_captured",
        "lbs carbon",
        "",
        ("max_lbs_per_day", "max_lbs_per_month"),
    ),
    Action.PLANT_TREE: ActionSpec(
        "/v1/plant_tree",
        "tree_planted",
        "trees",
        "trees:",
        ("max_trees_per_day", "max_trees_per_month"),
    ),
    Action.CLEAN_OCEAN: ActionSpec(
        "/v1/clean_ocean",
        "waste_removed",
        "lbs plastic",
        "waste:",
        ("max_waste_lbs_per_day", "max_waste_lbs_per_month"),
    ),
}
