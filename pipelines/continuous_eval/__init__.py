"""Continuous evaluation: score sampled live traffic from the inference table, exactly once.

``llmops pipeline continuous-eval [--once | --every 5m]`` (see :mod:`.pipeline`).
"""
