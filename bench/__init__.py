"""Benchmarks against cp and rsync of the same bytes.

python -m bench.run        python -m bench.load        python -m bench.scaling
"""
