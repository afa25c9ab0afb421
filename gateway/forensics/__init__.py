"""Forensics: evidence about what a model did and how it differs from another."""
