"""Faust agents: thin async glue around the pure functions in streams.ranking/userstate."""
