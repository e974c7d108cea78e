"""The Keras engine: a channel-element graph, L1 filter scores, rewrite by cloning."""
from edgeai.pruning.keras_engine.engine import KerasPruner

__all__ = ["KerasPruner"]
