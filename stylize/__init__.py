"""Stylization and generative editing (see README.md); modules arrive with their issues."""
