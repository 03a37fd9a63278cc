"""Classes that own a model, used as Ray Data actor-pool stages (``map_batches(Class,
compute=ActorPoolStrategy(...))``).

Each is a callable over a pandas batch; the work they do with the model's outputs lives in
``pipeline.stages`` so it can be tested without a cluster.
"""
