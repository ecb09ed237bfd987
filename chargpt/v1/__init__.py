"""Generated protobuf and gRPC code for the chargpt.v1 API (do not edit; see scripts/gen_protos.py)."""
