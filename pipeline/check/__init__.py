"""Checking a folder: the reference, verify and localisation, bench, predict."""
