"""Benchmark programs shared by ``benchmarks/`` scripts and the ``lit`` command line."""
