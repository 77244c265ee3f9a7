"""The recipe library: training recipes as YAML files, addressable by name (``--recipe fast``).

Data only; :mod:`rescompile.harness.recipes` reads and validates them.
"""
