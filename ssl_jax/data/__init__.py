"""Input pipeline (tf.data), host crops, device augmentation, the built-in dataset."""

# ImageNet statistics (torchvision's), re-exported by ssl_jax.methods.common. Kept here, in a
# module that imports nothing, so that light callers (the converter's CLI) need no JAX.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
