"""Helpers that know nothing of images: atomic files and locks, JSON, arrays,
progress, memory and thread limits. Every other part may import them."""
