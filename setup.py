"""Installs jsia_tf; runtime requirements are read from requirements.txt."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
    lines = (_HERE / "requirements.txt").read_text().splitlines()
    reqs = [line.split("#")[0].strip() for line in lines]
    return [r for r in reqs if r and not r.startswith("pytest")]


setuptools.setup(
    name="jsia_tf",
    version="0.1.0",
    description="JSIA-ReID (RGB-infrared person re-identification) in TensorFlow 2 / Keras 3",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["jsia_tf", "jsia_tf.*"]),
    install_requires=_requirements(),
    extras_require={"test": ["pytest>=8"]},
    entry_points={
        "console_scripts": [
            "jsia-train=jsia_tf.train:run",
            "jsia-evaluate=jsia_tf.evaluate:run",
            "jsia-synthetic=jsia_tf.data.synthetic.cli:run",
            "jsia-export=jsia_tf.export:run",
            "jsia-analyze=jsia_tf.analyze:run",
            "jsia-search=jsia_tf.search:run",
            "jsia-launch-local=jsia_tf.launch_local:run",
        ]
    },
)
