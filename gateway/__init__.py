"""Gateway aggregator service (rounds, strategies, publisher). Not built yet: see issue 5."""
