"""The gRPC adapter of the inference service: the servicer and its proto conversions."""
