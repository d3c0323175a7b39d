"""ssl_jax: self-supervised and supervised visual representation learning in JAX/Flax."""
import os

# XLA:CPU in jaxlib 0.10.2 compiles every convolution (forward and both gradients) to a YNNPACK
# fusion, which ran at ~0.55x the speed of XLA's Eigen convolutions on our 2-core CPU benchmark
# (docs/BENCHMARKS.md); removing `individual_convolution` from the YNN fusion types sends them
# back to Eigen with the same results up to float32 reassociation. Applied only if the user has
# not set the option, and only takes effect when imported before JAX initialises its backend.
# The flag is specific to the pinned jaxlib (XLA aborts on unknown flags); GPU/TPU ignore it.
_CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CPU_CONV_FLAG}".strip()
