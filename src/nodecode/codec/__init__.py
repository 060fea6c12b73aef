"""The learned codec of §3 / App. A.1: encoder, scalar quantizer, entropy model, decoder, .ndc bitstream."""
from nodecode.codec.autoencoder import CodecConfig, CompressionModel
from nodecode.codec.zoo import load_codec, list_codecs

__all__ = ["CodecConfig", "CompressionModel", "load_codec", "list_codecs"]
