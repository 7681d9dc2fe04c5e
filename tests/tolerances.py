"""Named tolerances for numeric comparisons, each with the reason it is what it is."""

# Same float32 computation, different kernels or op order (AdaptiveAvgPool vs mean, fused vs unfused
# BN): differences are a few ULPs of the largest activation; 1e-5 absolute on logits of order 1.
SAME_MATH_ATOL = 1e-5

# Published parameter/MAC figures are rounded to 2-3 significant digits ("5.3M", "0.39G"):
# compare within half a unit of the last published digit, expressed relative.
PUBLISHED_REL = 0.02

# fp32 eager vs exported artifact (ExecuTorch harness default): XNNPACK reorders float sums.
FP32_EXPORT_ATOL = 1e-3
FP32_EXPORT_RTOL = 1e-3
