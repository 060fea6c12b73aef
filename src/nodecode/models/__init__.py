"""ResNet / cResNet classifiers and their DeepLab "-d" segmenters (Torfason et al. 2018, Tables 1 and 3, §5.1)."""
from nodecode.models.aspp import ASPP, upsample_logits
from nodecode.models.registry import (ModelConfig, create_model, get_config, init_from_codec, list_models,
                                      register_model)
from nodecode.models.resnet import Bottleneck, ResNet, load_backbone

__all__ = ["ASPP", "Bottleneck", "ModelConfig", "ResNet", "create_model", "get_config", "init_from_codec",
           "list_models", "load_backbone", "register_model", "upsample_logits"]
