"""Stages of a job: explain (`stages.explain`), score with any scorer (`stages.score`).

Only the interface is imported here, so plug-in modules can import it without cycles.
"""

from neuroscribe.stages.base import Estimate, Plan, Stage, WorkItem, WorkResult, config_hash

__all__ = ["Estimate", "Plan", "Stage", "WorkItem", "WorkResult", "config_hash"]
