"""Phenomics evaluation: embed wells, batch-correct, aggregate, benchmark, plot.

Modules: `io` (tables), `embed` (sites -> crops -> model -> wells), `correct` (center-scale,
PCA, TVN on controls), `aggregate` (wells -> perturbations), `benchmark` (known-relationship
recall, replicate consistency), `mean_ap` (copairs), `pipeline` (correct -> aggregate -> score
a table: `run_benchmark`), `scorer` (a model's cached well table, scored), `sweep` (recall vs
training compute / encoder block), `compare` (trained vs random weights vs intensity
statistics), `probe` (CellProfiler feature probe), `plots`.

This layer reads checkpoints through maejax.api / maejax.workdir only and never trains; the
command lines are in maejax/cli (`python -m maejax.embed`, `maejax.benchmark`, ...).
"""
