"""The jobs' drivers: each runs one job on the Ray cluster (Ray Data, Ray Train, actors) and writes its outputs."""
