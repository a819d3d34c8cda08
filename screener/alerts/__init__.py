"""Alerts: the worklist store (matches, actions, users, do-not-contact) and outbound sinks."""
