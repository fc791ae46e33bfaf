"""Building PairUni's understanding–generation pairs (Alg. 1 of arXiv 2510.25682).

From an understanding set and a generation set (``inputs``): unit image features per record
(``features``: the Janus SigLIP tower, the HPS CLIP image tower, or precomputed arrays), aligned
pairs chosen among the records that carry their own completion (``selection``: k-means medoids,
all, or random), and retrieved pairs by exact cosine with a threshold and greedy one-use matching
(``matching``). ``build.build_pairs`` runs the whole of ``pairuni data pair``; each step can also
be called on its own from a notebook::

    from pairuni_jax.pairing.features import normalize_rows
    from pairuni_jax.pairing.matching import retrieve_pairs
    matches = retrieve_pairs(normalize_rows(gen_features), normalize_rows(und_features),
                             top_n=1, threshold=0.6)

The package imports nothing itself, so that ``pairuni data pair --help`` starts without JAX.
"""
