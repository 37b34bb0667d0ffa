"""High availability: leader election on a coordination.k8s.io Lease."""
