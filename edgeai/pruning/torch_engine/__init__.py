"""The PyTorch engine: torch-pruning's dependency graph with L1 filter scores."""
from edgeai.pruning.torch_engine.engine import TorchPruner

__all__ = ["TorchPruner"]
