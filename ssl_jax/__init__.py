"""ssl_jax: self-supervised and supervised visual representation learning in JAX/Flax."""
