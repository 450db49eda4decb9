"""Model compression: quantization, pruning, distillation (see README "Compression")."""
