"""rledit_env: lifelong knowledge editing of language models as a Gymnasium environment."""
