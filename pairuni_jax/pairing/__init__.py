"""Building PairUni's understanding–generation pairs (Alg. 1 of arXiv 2510.25682).

From an understanding set and a generation set (``inputs``): unit image features per record
(``features``: the Janus SigLIP tower, the HPS CLIP image tower, or precomputed arrays), aligned
pairs chosen among the records that carry their own completion (``selection``: k-means medoids,
all, or random), and retrieved pairs by exact cosine with a threshold and greedy one-use matching
(``matching``). ``build.build_pairs`` runs the whole of ``pairuni data pair``; each step can also
be called on its own from a notebook::

    from pairuni_jax.pairing import normalize_rows, retrieve_pairs
    matches = retrieve_pairs(normalize_rows(gen_features), normalize_rows(und_features),
                             top_n=1, threshold=0.6)
"""

from pairuni_jax.pairing.build import PairingConfig, build_pairs
from pairuni_jax.pairing.features import (
    Encoder,
    FeatureExtractor,
    clip_extractor,
    extract_features,
    normalize_rows,
    siglip_extractor,
)
from pairuni_jax.pairing.inputs import HalfRecord, HalfSet, PairingError, Side, read_halves
from pairuni_jax.pairing.matching import (
    Matches,
    Neighbours,
    greedy_match,
    nearest_neighbours,
    retrieve_pairs,
)
from pairuni_jax.pairing.report import PairingSummary
from pairuni_jax.pairing.selection import AlignedSelection, kmeans_medoids, select_aligned

__all__ = [
    "AlignedSelection",
    "Encoder",
    "FeatureExtractor",
    "HalfRecord",
    "HalfSet",
    "Matches",
    "Neighbours",
    "PairingConfig",
    "PairingError",
    "PairingSummary",
    "Side",
    "build_pairs",
    "clip_extractor",
    "extract_features",
    "greedy_match",
    "kmeans_medoids",
    "nearest_neighbours",
    "normalize_rows",
    "read_halves",
    "retrieve_pairs",
    "select_aligned",
    "siglip_extractor",
]
