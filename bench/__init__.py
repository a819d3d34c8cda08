"""Benchmarks: screener against peer engines, scaling, streaming and backfill. Run ``python -m bench --help``.

Sections live in private modules: ``_full_screen`` (screener vs peers), ``_scaling`` (one subprocess per
population x study-count cell), ``_streaming`` (broker -> engine), ``_backfill`` (OMOP Parquet -> broker).
``_workload`` builds the studies and population, ``_features``/``_peers`` the peers' inputs and adapters,
``_report`` writes BENCHMARKS.md. Peers are bench-only dependencies: ``pip install -e '.[bench]'``.
"""
