"""CPU stages on per-core worker processes: the pool and its supervisors (parent), the worker
program (child), the wire format between them, and the parent side of a worker segment."""
