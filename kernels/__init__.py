"""Fast paths for UniMMAD (Triton kernels on CUDA, fused torch ops elsewhere)."""
