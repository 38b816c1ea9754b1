"""Serving the exported embedder (jsia_tf.export): a gRPC client of TensorFlow Serving's Predict API
(:mod:`jsia_tf.serving.client`) and a loopback stand-in for the server (:mod:`jsia_tf.serving.server`).

The deployment files for TensorFlow Serving itself are in the top-level ``serving/`` folder.
"""
