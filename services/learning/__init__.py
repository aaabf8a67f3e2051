"""The learning loop: decision snapshots, training sets, training and off-policy evaluation.

Only ``snapshot`` is imported on the decision path; scikit-learn and skl2onnx are imported
lazily by ``train`` (the optional ``train`` extra).
"""
