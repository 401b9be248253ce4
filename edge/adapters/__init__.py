"""Meter adapters: one per protocol, each turning one poll of one meter into readings."""
