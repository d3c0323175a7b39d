"""Representation similarity: CKA, the CCA family, Procrustes / mutual kNN, minibatch all-pairs
CKA, exact streaming CKA, activation capture, layer identification across seeds and
depth-matched network CCA (Epstein et al.). Inputs are `[n_examples, n_features]`.
See docs/SIMILARITY.md."""
from ssl_jax.similarity.activations import capture, flatten_intermediates, to_examples
from ssl_jax.similarity.alignment import mutual_knn, procrustes
from ssl_jax.similarity.cca import cca, mean_cca, pwcca, svcca
from ssl_jax.similarity.depth_matched import (bases_similarity, batched_network_similarity,
                                              depth_matched_pairs, k_svcca, layer_bases)
from ssl_jax.similarity.identification import (corresponding_layer_accuracy,
                                              corresponding_layer_hits)
from ssl_jax.similarity.cka import double_centre, linear_cka, rbf_cka, u_centre
from ssl_jax.similarity.minibatch import (MinibatchCKAState, minibatch_cka, minibatch_cka_init,
                                          minibatch_cka_result, minibatch_cka_update)
from ssl_jax.similarity.streaming import (StreamingCKAState, streaming_cka_init,
                                          streaming_cka_result, streaming_cka_update,
                                          streaming_linear_cka)

__all__ = [
    "capture", "flatten_intermediates", "to_examples",
    "mutual_knn", "procrustes",
    "cca", "mean_cca", "pwcca", "svcca",
    "bases_similarity", "batched_network_similarity", "depth_matched_pairs", "k_svcca",
    "layer_bases",
    "double_centre", "linear_cka", "rbf_cka", "u_centre",
    "corresponding_layer_accuracy", "corresponding_layer_hits",
    "MinibatchCKAState", "minibatch_cka", "minibatch_cka_init", "minibatch_cka_result",
    "minibatch_cka_update",
    "StreamingCKAState", "streaming_cka_init", "streaming_cka_result", "streaming_cka_update",
    "streaming_linear_cka",
]
