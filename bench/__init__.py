"""``embedrank bench``: the runtime timed against PyTorch on the same inputs (a product command).

It sits above both the model side (the PyTorch rows) and the serving side (the ONNX rows).
"""
