"""mlship: turn a trained model into a tested prediction service on your own cloud."""

__version__ = "0.1.0"
