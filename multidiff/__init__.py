"""multidiff: diffusion models over audio, video and 3D shapes."""
__version__ = "0.1.0"
