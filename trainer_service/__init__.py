"""The chargpt trainer service: corpora, training jobs, progress streams and checkpoints over gRPC."""
