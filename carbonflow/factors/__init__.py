"""The emission factor registry: effective-dated, versioned factors with their sources.

* ``model``: the project's factor data file (``data/emission_factors.csv``), validated.
* ``units``: conversion of published units to canonical ones.
* ``codes``: machine keys (region codes, carriers, gases, parameters, variants).
* ``selection``: which version answers a lookup (region -> country -> global; proxies).
* ``store``: the registry in PostgreSQL: seed, restate, versions, lookup, gwp.
* ``build``: builds the data file from the published table it is compiled from.

See README.md in this package for the file's columns and the rules behind them.
"""
