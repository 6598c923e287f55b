"""Training and export (torch, onnx, the weight packages: ``vrec[torch]``): distillation,
adversarial fine-tuning, classification heads, similarity heads, multimodal experiments, ONNX
variants and the encoder bench. A worker never imports this package; ``encoders`` is inference."""
