"""Models: frozen backbones (and, later, evaluation and generative networks)."""
