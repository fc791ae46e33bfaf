"""Checkpoint I/O: Orbax model directories, Hugging Face conversion."""
