"""Phenomics evaluation: read embeddings, batch-correct, aggregate, benchmark, plot.

Modules: `io` (tables), `correct` (center-scale, PCA, TVN on controls), `aggregate` (wells ->
perturbations), `benchmark` (known-relationship recall, replicate consistency), `plots`.
The command line is `python -m maejax.benchmark`.
"""
