"""jsia_tf: JSIA-ReID (Wang et al., Neural Networks 2020) in TensorFlow 2 / Keras 3.

RGB-infrared person re-identification by cross-modality paired-image generation
(module G, Sec. 3.1), variation over modality-invariant features (module V, Sec. 3.2)
and set-level / instance-level feature alignment (module F, Sec. 3.3).
"""

import os

# TensorFlow's C++ start-up and graph-optimizer lines ("failed call to cuInit",
# "remapper failed: INVALID_ARGUMENT ...") are logged at ERROR level although nothing
# failed, between our progress lines. Hidden unless TF_CPP_MIN_LOG_LEVEL is set (0 shows
# all); an error that matters reaches Python as an exception either way.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
