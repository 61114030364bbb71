"""Where work goes out: actors, API clients, rules, the capture ledger, the sweeper."""
