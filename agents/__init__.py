"""Editors as agents of the rledit_env environment."""
