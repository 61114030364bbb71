"""Where work goes out: the Dramatiq actor, processing an event, the rules and what they plan,
the CarbonPass and 1ClickImpact clients, the sweeper."""

from __future__ import annotations

from carbonhook.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "Processor": "workers.processing",
        "WorkerRuntime": "workers.runtime",
        "Sweeper": "workers.sweeper",
        "CarbonPassClient": "workers.carbonpass",
        "ImpactClient": "workers.impact",
        "RuleSet": "workers.rules",
        "RulesHolder": "workers.rules",
        "load_rules": "workers.rules",
        "parse_rules": "workers.rules",
        "Resources": "workers.planning",
        "explain": "workers.planning",
        "declare_actors": "workers.actors",
    },
)
