"""Renderers: results in, text out. Raw integers stay in results; only renderers format them."""
