"""Safety and bias suites against served models: ``llmops safety run`` (see :mod:`.run`).

BBQ, CrowS-Pairs, BOLD, XSTest, AdvBench and DecodingTrust's toxic prompts, one module
each; requests go through the platform's OpenAI API on Ray Data, reports through
:mod:`evals.report`, metrics to the Pushgateway (:mod:`monitoring.safety_metrics`).
"""

from pipelines.safety.run import SUITES, RunResult, SafetyRun, build_suites, execute

__all__ = ["SUITES", "RunResult", "SafetyRun", "build_suites", "execute"]
