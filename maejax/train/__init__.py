"""Training: mesh and sharding rules, train state, optimizer, step, checkpoints, metrics.

`python -m maejax.train --config configs/<name>.py --workdir DIR`; in Python,
`maejax.train.loop.train(config, workdir)`.
"""
