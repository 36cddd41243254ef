"""neuroscribe: language models explain, simulate and score the units of other networks."""

from neuroscribe.errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    LLMError,
    NeuroscribeError,
    OutputError,
)
from neuroscribe.schema import (
    ActivationRecord,
    Explanation,
    Failure,
    NeuronRecord,
    RunManifest,
    Score,
    SequenceSimulation,
    UsageRecord,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationRecord",
    "BudgetExceeded",
    "ConfigError",
    "DataError",
    "Explanation",
    "Failure",
    "LLMError",
    "NeuronRecord",
    "NeuroscribeError",
    "OutputError",
    "RunManifest",
    "Score",
    "SequenceSimulation",
    "UsageRecord",
    "__version__",
]
