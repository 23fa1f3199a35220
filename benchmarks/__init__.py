"""Performance benchmarks of predictor: ``make bench`` (``python -m benchmarks.run``).

Each benchmark returns plain figures with a baseline measured in the same run; ``run``
prints them as ratios and writes ``reports/bench.json``. Nothing here asserts a timing.
"""
