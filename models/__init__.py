"""Model-level compute shared by the trainers and the actors: which architectures are computed exactly, packed
forward passes and the log-probs every loss reads."""
