"""Showing a run: results and their counts, text and HTML tables, the live views."""
