"""jsia_tf: JSIA-ReID (Wang et al., Neural Networks 2020) in TensorFlow 2 / Keras 3.

RGB-infrared person re-identification by cross-modality paired-image generation
(module G, Sec. 3.1), variation over modality-invariant features (module V, Sec. 3.2)
and set-level / instance-level feature alignment (module F, Sec. 3.3).
"""

import os
import sys

from jsia_tf import _startup

# TensorFlow's C++ start-up and graph-optimizer lines ("failed call to cuInit",
# "remapper failed: INVALID_ARGUMENT ...") are logged at ERROR level although nothing
# failed, between our progress lines. Hidden unless the user sets TF_CPP_MIN_LOG_LEVEL
# (0 shows all); an error that matters reaches Python as an exception either way. The
# lines written before that variable applies are dropped by _startup. _QUIET marks the
# setting as ours, so that child processes (the dataset renderer's) hide them too.
_QUIET = "JSIA_TF_QUIET_TENSORFLOW"
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ or os.environ.get(_QUIET) == "1":
    os.environ.update({"TF_CPP_MIN_LOG_LEVEL": "3", _QUIET: "1"})
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _startup.QuietTensorFlowImport())

__version__ = "0.1.0"
