"""Layer 11: the ``ngconvert`` command (``ngconvert.cli.main:main``)."""
