"""``python -m jsia_tf.data.synthetic``."""

from jsia_tf.data.synthetic import cli

cli.run()
