"""Factories for registry and program objects, shared by every domain's tests.

Owned by the registry work; other domains add factories at the end of the file.
"""
