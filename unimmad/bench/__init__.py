"""``unimmad bench`` and the benchmark toolkit every harness shares.

* :mod:`.cases` — one case factory per op (model, C-MoE, anomaly map) and the provider
  vocabulary (``reference``, ``torch``, ``triton``, ``compile``);
* :mod:`.timing` — one timing helper (CPU ``perf_counter``, CUDA ``do_bench``);
* :mod:`.parity` — the SPEC §3 tolerance table, relative error and verdict;
* :mod:`.meta` — machine, versions, commit and peak memory of a result;
* :mod:`.sections`, :mod:`.cli` — the ``unimmad bench`` command (``DESCRIPTION``).

``tests/``, ``benchmarks/test_bench_*.py`` and the GPU scripts import these modules.
"""
from .cli import DESCRIPTION, HelpFormatter, add_arguments, main, run, to_markdown, to_terminal

__all__ = ["DESCRIPTION", "HelpFormatter", "add_arguments", "run", "main", "to_markdown",
           "to_terminal"]
