"""jsia_tf: JSIA-ReID (Wang et al., Neural Networks 2020) in TensorFlow 2 / Keras 3.

RGB-infrared person re-identification by cross-modality paired-image generation
(module G, Sec. 3.1), variation over modality-invariant features (module V, Sec. 3.2)
and set-level / instance-level feature alignment (module F, Sec. 3.3).
"""

__version__ = "0.1.0"
