"""subliminal-mnist: see, measure and prove subliminal learning on a laptop CPU."""

__version__ = "0.1.0"
