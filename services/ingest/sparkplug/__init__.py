"""Sparkplug B 3.0 host side of ingest: topics, payload codec, session state, mapping."""
