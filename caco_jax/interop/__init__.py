"""Interoperability: reading torch.save files, torchvision <-> caco-jax conversion, the PyTorch
reference of every variant, ONNX export."""
