"""resnetx's floor: errors, files, batching, lazy imports and the TensorRT flavour table.

Every module here imports nothing of the project, so pipeline/, exporters/ and runtimes/ all stand on it.
"""
