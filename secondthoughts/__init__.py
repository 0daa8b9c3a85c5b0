"""secondthoughts: re-align text with human values by learning chains of edits."""

__version__ = "0.1.0"
