"""Sinks: where flows end (collections, callbacks, routing; aggregates and files to come)."""
