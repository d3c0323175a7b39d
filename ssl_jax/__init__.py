"""ssl_jax: self-supervised and supervised visual representation learning in JAX/Flax.

Importing the package has no side effects; entry points call
`ssl_jax.xla_flags.configure_cpu()` before JAX starts (see that module).
"""
