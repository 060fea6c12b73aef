"""The learned codec of §3 / App. A.1 (encoder, quantizer, entropy model, decoder, .ndc bitstream) and the classical
codecs it is compared with (classical.py: JPEG, JPEG 2000, WebP, AVIF at matched bpp)."""
from nodecode.codec.autoencoder import CodecConfig, CompressionModel
from nodecode.codec.zoo import load_codec, list_codecs

__all__ = ["CodecConfig", "CompressionModel", "load_codec", "list_codecs"]
