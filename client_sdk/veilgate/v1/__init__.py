"""Generated gRPC code for veilgate.v1 (tools/gen_proto.py). Never edit by hand."""
